package dev.otaro.demo

import org.json.JSONArray
import org.json.JSONObject
import java.util.Base64

// demo_bundle.json, written by `otaro demo ARTIFACT --write-mobile-bundle DIR`
// (format: otaro_export/demo/mobile_bundle.py). Parsed with Android's built-in org.json.

class CacheSlot(val input: String, val output: String, val emptyShape: LongArray)

class ModelIo(
    val inputIds: String,
    val bits: String,
    val logits: String,
    val positionName: String?,
    val positionRank: Int,
    val attentionMask: String?,
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
            require(root.optString("format") == "otaro-demo-bundle" && root.optInt("format_version") == 1) {
                "not a version-1 otaro demo bundle"
            }
            val io = root.getJSONObject("io")
            val position = io.optJSONObject("position")
            val cache = objects(io.getJSONArray("cache")).map {
                CacheSlot(it.getString("input"), it.getString("output"), longs(it.getJSONArray("empty_shape")))
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
                    logits = io.getString("logits"),
                    positionName = position?.getString("name"),
                    positionRank = position?.getInt("rank") ?: 0,
                    attentionMask = if (io.isNull("attention_mask")) null else io.getString("attention_mask"),
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
