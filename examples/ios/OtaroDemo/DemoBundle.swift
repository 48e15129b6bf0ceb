import Foundation

// demo_bundle.json, written by `otaro demo ARTIFACT --write-mobile-bundle DIR`
// (format: otaro_export/demo/mobile_bundle.py).

/// One KV cache tensor: ONE buffer of `shape` passed as both its past `input` and its present `output`.
struct CacheSlot: Decodable {
    let input: String
    let output: String
    let shape: [Int]
}

/// The decoder graph's I/O names (docs/FORMAT.md §8).
struct ModelIo: Decodable {
    let inputIds: String
    let bits: String
    let seqlensK: String
    let totalSequenceLength: String
    let logitsPositions: String
    let logits: String
    let cache: [CacheSlot]
}

struct ChoiceOption: Decodable {
    let text: String
    let ids: [Int64]
}

struct DemoTask: Decodable, Identifiable {
    let name: String
    let kind: String  // "choose" | "generate"
    let bits: Int  // the policy's precision
    let prompt: String
    let promptIds: [Int64]
    let options: [ChoiceOption]?
    let maxNewTokens: Int?
    var id: String { name }
}

struct DemoBundle: Decodable {
    let format: String
    let formatVersion: Int
    let modelFile: String
    let onnxruntimeVersion: String
    let precisions: [Int]
    let maxSeqLen: Int
    let vocabSize: Int
    let eosTokenIds: [Int64]
    let io: ModelIo
    let tasks: [DemoTask]
    let tokenBytes: [String]  // base64

    static func load(from dir: URL) throws -> DemoBundle {
        let decoder = JSONDecoder()
        decoder.keyDecodingStrategy = .convertFromSnakeCase
        let bundle = try decoder.decode(DemoBundle.self, from: Data(contentsOf: dir.appendingPathComponent("demo_bundle.json")))
        guard bundle.format == "otaro-demo-bundle", bundle.formatVersion == 2 else {
            throw DemoError.message("\(dir.path) holds no version-2 otaro demo bundle: write it again with this otaro-export")
        }
        return bundle
    }
}

enum DemoError: Error, CustomStringConvertible {
    case message(String)
    var description: String { if case .message(let m) = self { return m }; return "" }
}
