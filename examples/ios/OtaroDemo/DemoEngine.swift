import Foundation
import OnnxRuntimeBindings

// The demo's engine: ONE onnxruntime session, loaded once, run at a precision per call.
// Mirrors examples/mobile/bundle_runner.py function by function (the tested specification).

/// One ONNX session; `step` runs tokens at E5M<bits> against the KV cache.
final class BundleModel {
    let bundle: DemoBundle
    let session: ORTSession
    private let env: ORTEnv
    private let tokenBytes: [Data]
    private var cache: [String: ORTValue] = [:]
    private var position: Int64 = 0

    init(dir: URL, bundle: DemoBundle) throws {
        self.bundle = bundle
        env = try ORTEnv(loggingLevel: .warning)
        session = try ORTSession(
            env: env, modelPath: dir.appendingPathComponent(bundle.modelFile).path, sessionOptions: ORTSessionOptions())
        tokenBytes = bundle.tokenBytes.map { Data(base64Encoded: $0) ?? Data() }
        try reset()
    }

    func reset() throws {
        cache = [:]
        for slot in bundle.io.cache {
            // A zero-length tensor; 4 spare bytes so the data pointer is never null.
            cache[slot.input] = try ORTValue(
                tensorData: NSMutableData(length: 4)!, elementType: .float,
                shape: slot.emptyShape.map { NSNumber(value: $0) })
        }
        position = 0
    }

    private func int64Tensor(_ values: [Int64], shape: [Int]) throws -> ORTValue {
        var copy = values
        let data = NSMutableData(bytes: &copy, length: copy.count * MemoryLayout<Int64>.stride)
        return try ORTValue(tensorData: data, elementType: .int64, shape: shape.map { NSNumber(value: $0) })
    }

    /// Logits [ids.count][vocab] for `ids` at positions position..., appended to the cache.
    func step(_ ids: [Int64], bits: Int) throws -> [[Float]] {
        guard bundle.precisions.contains(bits) else {
            throw DemoError.message("E5M\(bits) is not served by this model (\(bundle.precisions))")
        }
        let io = bundle.io
        let n = ids.count
        var feeds = cache
        feeds[io.inputIds] = try int64Tensor(ids, shape: [1, n])
        // A 0-dim int64 tensor: the per-call precision input of the one loaded program.
        feeds[io.bits] = try int64Tensor([Int64(bits)], shape: [])
        if let pos = io.position {
            let values = (0..<n).map { position + Int64($0) }
            feeds[pos.name] = try int64Tensor(values, shape: pos.rank == 1 ? [n] : [1, n])
        }
        if let mask = io.attentionMask {
            let total = Int(position) + n
            feeds[mask] = try int64Tensor([Int64](repeating: 1, count: total), shape: [1, total])
        }
        let names = Set([io.logits] + io.cache.map { $0.output })
        let outputs = try session.run(withInputs: feeds, outputNames: names, runOptions: nil)
        guard let logitsValue = outputs[io.logits] else { throw DemoError.message("no \(io.logits) output") }
        let vocab = try logitsValue.tensorTypeAndShapeInfo().shape[2].intValue
        let flat: [Float] = (try logitsValue.tensorData() as Data).withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
        for slot in io.cache {
            guard let present = outputs[slot.output] else { throw DemoError.message("no \(slot.output) output") }
            cache[slot.input] = present
        }
        position += Int64(n)
        return (0..<n).map { Array(flat[($0 * vocab)..<(($0 + 1) * vocab)]) }
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
        try model.reset()
        let logits = try model.step(prompt + option.ids, bits: bits)
        var sum = 0.0
        for (i, token) in option.ids.enumerated() {
            let row = logits[prompt.count - 1 + i]
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
    try model.reset()
    let eos = Set(model.bundle.eosTokenIds)
    let budget = min(task.maxNewTokens ?? 0, model.bundle.maxSeqLen - task.promptIds.count)
    var logits = try model.step(task.promptIds, bits: bits)
    var out: [Int64] = []
    while budget > 0 {
        let last = logits[logits.count - 1]
        var token = 0
        for i in last.indices where last[i] > last[token] { token = i }
        out.append(Int64(token))
        if eos.contains(Int64(token)) || out.count >= budget { break }
        logits = try model.step([Int64(token)], bits: bits)
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
