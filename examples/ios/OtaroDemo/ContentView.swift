import SwiftUI

/// Holds the ONE model for the app's lifetime: loaded on the first run, reused by every task.
@MainActor
final class DemoState: ObservableObject {
    @Published var bundle: DemoBundle?
    @Published var chosenBits: [String: Int] = [:]
    @Published var log: [String] = []
    @Published var running = false
    private var model: BundleModel?
    private var loads = 0
    private let dir = Bundle.main.url(forResource: "bundle", withExtension: nil)

    init() {
        do {
            guard let dir else { throw DemoError.message("no 'bundle' folder in the app (see examples/ios/README.md)") }
            let b = try DemoBundle.load(from: dir)
            bundle = b
            for task in b.tasks { chosenBits[task.name] = task.bits }
        } catch {
            log.append("error: \(error)")
        }
    }

    func runSession() {
        guard let bundle, let dir, !running else { return }
        running = true
        let bits = chosenBits
        Task.detached { [weak self] in
            do {
                let model = try await self?.loadedModel(dir: dir, bundle: bundle)
                guard let model else { return }
                for task in bundle.tasks {
                    let r = try runTask(model, task, bits: bits[task.name] ?? task.bits)
                    await self?.append(String(
                        format: "%@ E5M%d %.1f ms %.1f tok/s RSS %.1f MiB session %@\n  -> %@",
                        task.name, r.bits, r.latencyMs, r.tokensPerSecond, r.residentMiB,
                        String(describing: r.sessionId), r.answer))
                }
                await self?.finish()
            } catch {
                await self?.append("error: \(error)")
                await self?.finish()
            }
        }
    }

    private func loadedModel(dir: URL, bundle: DemoBundle) throws -> BundleModel {
        if let model { return model }
        let t0 = Date()
        let m = try BundleModel(dir: dir, bundle: bundle)
        model = m
        loads += 1
        log.append(String(format: "loaded %@ in %.2f s; RSS %.1f MiB", bundle.modelFile, Date().timeIntervalSince(t0), residentMiB()))
        return m
    }

    private func append(_ line: String) { log.append(line) }

    private func finish() {
        log.append("loads so far: \(loads) (one session for every task and precision)")
        running = false
    }
}

struct ContentView: View {
    @StateObject private var state = DemoState()

    var body: some View {
        NavigationStack {
            List {
                if let bundle = state.bundle {
                    Section("Precision per task") {
                        ForEach(bundle.tasks) { task in
                            Picker("\(task.name) (\(task.kind))", selection: Binding(
                                get: { state.chosenBits[task.name] ?? task.bits },
                                set: { state.chosenBits[task.name] = $0 })
                            ) {
                                ForEach(bundle.precisions, id: \.self) { Text("E5M\($0)").tag($0) }
                            }
                        }
                        Button(state.running ? "Running…" : "Run session") { state.runSession() }
                            .disabled(state.running)
                    }
                }
                Section("Log") {
                    ForEach(Array(state.log.enumerated()), id: \.offset) { Text($0.element).font(.system(.footnote, design: .monospaced)) }
                }
            }
            .navigationTitle("OTARo demo")
        }
    }
}
