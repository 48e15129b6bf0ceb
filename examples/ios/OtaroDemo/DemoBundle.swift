import Foundation

// demo_bundle.json, written by `otaro demo ARTIFACT --write-mobile-bundle DIR`
// (format: otaro_export/demo/mobile_bundle.py).

struct CacheSlot: Decodable {
    let input: String
    let output: String
    let emptyShape: [Int]
}

struct PositionInput: Decodable {
    let name: String
    let rank: Int
}

struct ModelIo: Decodable {
    let inputIds: String
    let bits: String
    let logits: String
    let position: PositionInput?
    let attentionMask: String?
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
    let eosTokenIds: [Int64]
    let io: ModelIo
    let tasks: [DemoTask]
    let tokenBytes: [String]  // base64

    static func load(from dir: URL) throws -> DemoBundle {
        let decoder = JSONDecoder()
        decoder.keyDecodingStrategy = .convertFromSnakeCase
        let bundle = try decoder.decode(DemoBundle.self, from: Data(contentsOf: dir.appendingPathComponent("demo_bundle.json")))
        guard bundle.format == "otaro-demo-bundle", bundle.formatVersion == 1 else {
            throw DemoError.message("\(dir.path) holds no version-1 otaro demo bundle")
        }
        return bundle
    }
}

enum DemoError: Error, CustomStringConvertible {
    case message(String)
    var description: String { if case .message(let m) = self { return m }; return "" }
}
