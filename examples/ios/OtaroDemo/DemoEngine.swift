import Foundation
import OnnxRuntimeBindings

// The demo's engine: ONE onnxruntime session, loaded once, run at a precision per call.
// Mirrors examples/mobile/bundle_runner.py function by function (the tested specification).

/// One ONNX session; `step` runs tokens at E5M<bits> against the KV cache.
///
/// Each KV cache is ONE buffer of max_seq_len positions for the model's life, passed to
/// `ORTSession.run(withInputs:outputs:runOptions:)` as its past input AND as its preallocated present
/// output: onnxruntime's GroupQueryAttention then writes a step's new positions in place, so no step
/// copies a cache (docs/FORMAT.md §8). That call takes every output preallocated, the logits too.
final class BundleModel {
    let bundle: DemoBundle
    let session: ORTSession
    private let env: ORTEnv
    private let tokenBytes: [Data]
    private let cache: [ORTValue]
    private var position: Int64 = 0

    init(dir: URL, bundle: DemoBundle) throws {
        self.bundle = bundle
        env = try ORTEnv(loggingLevel: .warning)
        session = try ORTSession(
            env: env, modelPath: dir.appendingPathComponent(bundle.modelFile).path, sessionOptions: ORTSessionOptions())
        tokenBytes = bundle.tokenBytes.map { Data(base64Encoded: $0) ?? Data() }
        cache = try bundle.io.cache.map { slot in
            let bytes = slot.shape.reduce(1, *) * MemoryLayout<Float>.stride
            return try ORTValue(
                tensorData: NSMutableData(length: bytes)!, elementType: .float, shape: slot.shape.map { NSNumber(value: $0) })
        }
    }

    /// Positions at or past total_sequence_length are never read: nothing to clear.
    func reset() {
        position = 0
    }

    private func tensor<T>(_ values: [T], _ type: ORTTensorElementDataType, shape: [Int]) throws -> ORTValue {
        var copy = values
        let data = NSMutableData(bytes: &copy, length: copy.count * MemoryLayout<T>.stride)
        return try ORTValue(tensorData: data, elementType: type, shape: shape.map { NSNumber(value: $0) })
    }

    /// Logits [rows.count][vocab] at `rows` (indices into `ids`) for `ids` at positions position...
    func step(_ ids: [Int64], bits: Int, rows: [Int64]) throws -> [[Float]] {
        guard bundle.precisions.contains(bits) else {
            throw DemoError.message("E5M\(bits) is not served by this model (\(bundle.precisions))")
        }
        let total = position + Int64(ids.count)
        guard total <= Int64(bundle.maxSeqLen) else {
            throw DemoError.message("\(total) positions exceed this model's max_seq_len \(bundle.maxSeqLen)")
        }
        let io = bundle.io
        var feeds: [String: ORTValue] = [:]
        feeds[io.inputIds] = try tensor(ids, .int64, shape: [1, ids.count])
        // A 0-dim int64 tensor: the per-call precision input of the one loaded program.
        feeds[io.bits] = try tensor([Int64(bits)], .int64, shape: [])
        feeds[io.seqlensK] = try tensor([Int32(total - 1)], .int32, shape: [1])
        feeds[io.totalSequenceLength] = try tensor([Int32(total)], .int32, shape: [])
        feeds[io.logitsPositions] = try tensor(rows, .int64, shape: [rows.count])
        let vocab = bundle.vocabSize
        let logitsData = NSMutableData(length: rows.count * vocab * MemoryLayout<Float>.stride)!
        var outputs: [String: ORTValue] = [
            io.logits: try ORTValue(
                tensorData: logitsData, elementType: .float, shape: [1, rows.count, vocab].map { NSNumber(value: $0) })
        ]
        for (slot, buffer) in zip(io.cache, cache) {
            feeds[slot.input] = buffer
            outputs[slot.output] = buffer  // the same value: written in place
        }
        try session.run(withInputs: feeds, outputs: outputs, runOptions: nil)
        position = total
        let flat: [Float] = (logitsData as Data).withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
        return (0..<rows.count).map { Array(flat[($0 * vocab)..<(($0 + 1) * vocab)]) }
    }

    func decode(_ ids: [Int64]) -> String {
        var bytes = Data()
        for id in ids { bytes.append(tokenBytes[Int(id)]) }
        return String(decoding: bytes, as: UTF8.self)
    }
}

struct TaskResult: Identifiable {
    let task: DemoTask
    let bits: Int
    let answer: String
    let latencyMs: Double
    let tokensPerSecond: Double
    let residentMiB: Double
    let sessionId: ObjectIdentifier
    var id: String { task.name }
}

/// Mean log-probability of each option's tokens after the prompt; the best option wins.
func scoreOptions(_ model: BundleModel, _ task: DemoTask, bits: Int) throws -> (String, [String: Double]) {
    let prompt = task.promptIds
    var scores: [String: Double] = [:]
    let options = task.options ?? []
    for option in options {
        model.reset()
        // position i's logits predict token i + 1: only the rows that predict the option's tokens
        let rows = option.ids.indices.map { Int64(prompt.count - 1 + $0) }
        let logits = try model.step(prompt + option.ids, bits: bits, rows: rows)
        var sum = 0.0
        for (i, token) in option.ids.enumerated() {
            let row = logits[i]
            let maxValue = Double(row.max() ?? 0)
            let z = row.reduce(0.0) { $0 + exp(Double($1) - maxValue) }
            sum += Double(row[Int(token)]) - maxValue - log(z)
        }
        scores[option.text] = sum / Double(option.ids.count)
    }
    var best = options[0].text  // ties: the first option wins
    for option in options where scores[option.text]! > scores[best]! { best = option.text }
    return (best, scores)
}

/// Greedy generation with the KV cache; returns (text, new tokens).
func generate(_ model: BundleModel, _ task: DemoTask, bits: Int) throws -> (String, Int) {
    model.reset()
    let eos = Set(model.bundle.eosTokenIds)
    // the last new token is never fed back: a prompt of S tokens leaves room for max_seq_len - S + 1
    let budget = min(task.maxNewTokens ?? 0, model.bundle.maxSeqLen - task.promptIds.count + 1)
    var out: [Int64] = []
    if budget <= 0 { return ("", 0) }
    // the prompt's last logits only, then one row per new token
    var logits = try model.step(task.promptIds, bits: bits, rows: [Int64(task.promptIds.count - 1)])
    while true {
        let last = logits[logits.count - 1]
        var token = 0
        for i in last.indices where last[i] > last[token] { token = i }
        out.append(Int64(token))
        if eos.contains(Int64(token)) || out.count >= budget { break }
        logits = try model.step([Int64(token)], bits: bits, rows: [0])
    }
    return (model.decode(out.filter { !eos.contains($0) }), out.count)
}

/// This process's memory footprint in MiB (what iOS counts against the app's limit).
func residentMiB() -> Double {
    var info = task_vm_info_data_t()
    var count = mach_msg_type_number_t(MemoryLayout<task_vm_info_data_t>.size / MemoryLayout<natural_t>.size)
    let kr = withUnsafeMutablePointer(to: &info) {
        $0.withMemoryRebound(to: integer_t.self, capacity: Int(count)) {
            task_info(mach_task_self_, task_flavor_t(TASK_VM_INFO), $0, &count)
        }
    }
    return kr == KERN_SUCCESS ? Double(info.phys_footprint) / 1_048_576 : -1
}

func runTask(_ model: BundleModel, _ task: DemoTask, bits: Int) throws -> TaskResult {
    let t0 = DispatchTime.now().uptimeNanoseconds
    let answer: String
    let tokens: Int
    if task.kind == "choose" {
        answer = try scoreOptions(model, task, bits: bits).0
        tokens = (task.options ?? []).reduce(0) { $0 + task.promptIds.count + $1.ids.count }
    } else {
        (answer, tokens) = try generate(model, task, bits: bits)
    }
    let ms = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e6
    return TaskResult(
        task: task, bits: bits, answer: answer, latencyMs: ms, tokensPerSecond: Double(tokens) / (ms / 1000),
        residentMiB: residentMiB(), sessionId: ObjectIdentifier(model.session))
}
