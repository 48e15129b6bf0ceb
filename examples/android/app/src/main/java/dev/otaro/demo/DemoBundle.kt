package dev.otaro.demo

import org.json.JSONArray
import org.json.JSONObject
import java.util.Base64

// demo_bundle.json, written by `otaro demo ARTIFACT --write-mobile-bundle DIR`
// (format: otaro_export/demo/mobile_bundle.py). Parsed with Android's built-in org.json.

/** One KV cache tensor: ONE buffer of [shape] bound as both its past [input] and its present [output]. */
class CacheSlot(val input: String, val output: String, val shape: LongArray)

// The decoder graph's I/O names (docs/FORMAT.md §8).
class ModelIo(
    val inputIds: String,
    val bits: String,
    val seqlensK: String,
    val totalSequenceLength: String,
    val logitsPositions: String,
    val logits: String,
    val cache: List<CacheSlot>
)

class ChoiceOption(val text: String, val ids: LongArray)

class DemoTask(
    val name: String,
    val kind: String, // "choose" | "generate"
    val policyBits: Int,
    val prompt: String,
    val promptIds: LongArray,
    val options: List<ChoiceOption>,
    val maxNewTokens: Int
)

class DemoBundle(
    val modelFile: String,
    val onnxruntimeVersion: String,
    val precisions: List<Int>,
    val maxSeqLen: Int,
    val eosTokenIds: Set<Long>,
    val io: ModelIo,
    val tasks: List<DemoTask>,
    val tokenBytes: List<ByteArray>
) {
    companion object {
        fun parse(text: String): DemoBundle {
            val root = JSONObject(text)
            require(root.optString("format") == "otaro-demo-bundle" && root.optInt("format_version") == 2) {
                "not a version-2 otaro demo bundle: write it again with this otaro-export"
            }
            val io = root.getJSONObject("io")
            val cache = objects(io.getJSONArray("cache")).map {
                CacheSlot(it.getString("input"), it.getString("output"), longs(it.getJSONArray("shape")))
            }
            val tasks = objects(root.getJSONArray("tasks")).map { t ->
                val kind = t.getString("kind")
                DemoTask(
                    name = t.getString("name"),
                    kind = kind,
                    policyBits = t.getInt("bits"),
                    prompt = t.getString("prompt"),
                    promptIds = longs(t.getJSONArray("prompt_ids")),
                    options = if (kind == "choose") objects(t.getJSONArray("options")).map {
                        ChoiceOption(it.getString("text"), longs(it.getJSONArray("ids")))
                    } else emptyList(),
                    maxNewTokens = if (kind == "generate") t.getInt("max_new_tokens") else 0
                )
            }
            val tokenBytes = root.getJSONArray("token_bytes").let { arr ->
                (0 until arr.length()).map { Base64.getDecoder().decode(arr.getString(it)) }
            }
            return DemoBundle(
                modelFile = root.getString("model_file"),
                onnxruntimeVersion = root.optString("onnxruntime_version"),
                precisions = longs(root.getJSONArray("precisions")).map { it.toInt() },
                maxSeqLen = root.getInt("max_seq_len"),
                eosTokenIds = longs(root.getJSONArray("eos_token_ids")).toSet(),
                io = ModelIo(
                    inputIds = io.getString("input_ids"),
                    bits = io.getString("bits"),
                    seqlensK = io.getString("seqlens_k"),
                    totalSequenceLength = io.getString("total_sequence_length"),
                    logitsPositions = io.getString("logits_positions"),
                    logits = io.getString("logits"),
                    cache = cache
                ),
                tasks = tasks,
                tokenBytes = tokenBytes
            )
        }

        private fun objects(arr: JSONArray): List<JSONObject> = (0 until arr.length()).map { arr.getJSONObject(it) }

        private fun longs(arr: JSONArray): LongArray = LongArray(arr.length()) { arr.getLong(it) }
    }
}
