package dev.otaro.demo

import ai.onnxruntime.OnnxTensor
import ai.onnxruntime.OrtEnvironment
import ai.onnxruntime.OrtSession
import java.io.File
import java.nio.ByteBuffer
import java.nio.ByteOrder
import java.nio.IntBuffer
import java.nio.LongBuffer

// The demo's engine: ONE onnxruntime session, loaded once, run at a precision per call.
// Mirrors examples/mobile/bundle_runner.py function by function (the tested specification).

/**
 * One ONNX session; [step] runs tokens at E5M<bits> against the KV cache.
 * [customOpLibrary]: path of the project's fused SEFP kernel library for onnxruntime, if the app
 * ships one (see README); without it, stock onnxruntime runs the SEFP ops' function bodies (slow).
 *
 * Each KV cache is ONE direct buffer of max_seq_len positions for the model's life, passed to
 * [OrtSession.run] as its past input AND as the pinned (caller-allocated) present output: onnxruntime's
 * GroupQueryAttention then writes a step's new positions in place, so no step copies a cache
 * (docs/FORMAT.md §8). Pinned outputs are onnxruntime's Java API since microsoft/onnxruntime#16835.
 */
class BundleModel(dir: File, val bundle: DemoBundle, customOpLibrary: String? = null) : AutoCloseable {
    private val env: OrtEnvironment = OrtEnvironment.getEnvironment()
    val session: OrtSession = createSession(File(dir, bundle.modelFile).path, customOpLibrary)
    private val cache: List<OnnxTensor> = bundle.io.cache.map { slot ->
        var floats = 1L
        for (d in slot.shape) floats *= d
        // direct and in native order: the tensor wraps this memory instead of copying it
        val memory = ByteBuffer.allocateDirect(Math.toIntExact(floats * 4)).order(ByteOrder.nativeOrder())
        OnnxTensor.createTensor(env, memory.asFloatBuffer(), slot.shape)
    }
    private var position = 0L

    private fun createSession(modelPath: String, customOpLibrary: String?): OrtSession {
        val options = OrtSession.SessionOptions()
        if (customOpLibrary != null) options.registerCustomOpLibrary(customOpLibrary)
        return env.createSession(modelPath, options)
    }

    /** Positions at or past total_sequence_length are never read: nothing to clear. */
    fun reset() {
        position = 0
    }

    /** Logits [rows.size][vocab] at [rows] (indices into [ids]) for [ids] at positions position.. */
    fun step(ids: LongArray, bits: Int, rows: LongArray): Array<FloatArray> {
        require(bits in bundle.precisions) { "E5M$bits is not served by this model (${bundle.precisions})" }
        val total = position + ids.size
        require(total <= bundle.maxSeqLen) { "$total positions exceed this model's max_seq_len ${bundle.maxSeqLen}" }
        val io = bundle.io
        val owned = ArrayList<OnnxTensor>()
        fun own(t: OnnxTensor): OnnxTensor { owned.add(t); return t }
        try {
            val feeds = HashMap<String, OnnxTensor>()
            feeds[io.inputIds] = own(OnnxTensor.createTensor(env, LongBuffer.wrap(ids), longArrayOf(1, ids.size.toLong())))
            // A 0-dim int64 tensor: the per-call precision input of the one loaded program.
            feeds[io.bits] = own(OnnxTensor.createTensor(env, LongBuffer.wrap(longArrayOf(bits.toLong())), LongArray(0)))
            feeds[io.seqlensK] = own(OnnxTensor.createTensor(env, IntBuffer.wrap(intArrayOf(total.toInt() - 1)), longArrayOf(1)))
            feeds[io.totalSequenceLength] =
                own(OnnxTensor.createTensor(env, IntBuffer.wrap(intArrayOf(total.toInt())), LongArray(0)))
            feeds[io.logitsPositions] = own(OnnxTensor.createTensor(env, LongBuffer.wrap(rows), longArrayOf(rows.size.toLong())))
            val pinned = HashMap<String, OnnxTensor>()
            io.cache.forEachIndexed { i, slot ->
                feeds[slot.input] = cache[i]
                pinned[slot.output] = cache[i] // the same tensor: written in place
            }
            val result = session.run(feeds, setOf(io.logits), pinned)
            try {
                val logitsTensor = result.get(io.logits).get() as OnnxTensor
                val vocab = logitsTensor.info.shape[2].toInt()
                val flat = logitsTensor.floatBuffer
                position = total
                return Array(rows.size) { row -> FloatArray(vocab) { flat.get(row * vocab + it) } }
            } finally {
                result.close() // closes the logits only: pinned outputs stay the caller's
            }
        } finally {
            owned.forEach { it.close() }
        }
    }

    fun decode(ids: List<Long>): String {
        val out = java.io.ByteArrayOutputStream()
        ids.forEach { out.write(bundle.tokenBytes[it.toInt()]) }
        return String(out.toByteArray(), Charsets.UTF_8)
    }

    override fun close() {
        cache.forEach { it.close() }
        session.close()
    }
}

class TaskResult(
    val task: DemoTask,
    val bits: Int,
    val answer: String,
    val latencyMs: Double,
    val tokensPerSecond: Double,
    val rssMiB: Double,
    val sessionId: Int
)

/** Mean log-probability of each option's tokens after the prompt; the best option wins. */
fun scoreOptions(model: BundleModel, task: DemoTask, bits: Int): Pair<String, Map<String, Double>> {
    val prompt = task.promptIds
    val scores = LinkedHashMap<String, Double>()
    for (option in task.options) {
        model.reset()
        // position i's logits predict token i + 1: only the rows that predict the option's tokens
        val rows = LongArray(option.ids.size) { (prompt.size - 1 + it).toLong() }
        val logits = model.step(prompt + option.ids, bits, rows)
        var sum = 0.0
        for (i in option.ids.indices) {
            val row = logits[i]
            var max = row[0].toDouble()
            for (v in row) if (v > max) max = v.toDouble()
            var z = 0.0
            for (v in row) z += Math.exp(v - max)
            sum += row[option.ids[i].toInt()] - max - Math.log(z)
        }
        scores[option.text] = sum / option.ids.size
    }
    var best = task.options[0].text // ties: the first option wins
    for (option in task.options) if (scores.getValue(option.text) > scores.getValue(best)) best = option.text
    return Pair(best, scores)
}

/** Greedy generation with the KV cache; returns (text, new tokens). */
fun generate(model: BundleModel, task: DemoTask, bits: Int): Pair<String, Int> {
    model.reset()
    val eos = model.bundle.eosTokenIds
    // the last new token is never fed back: a prompt of S tokens leaves room for max_seq_len - S + 1
    val budget = minOf(task.maxNewTokens, model.bundle.maxSeqLen - task.promptIds.size + 1)
    val out = ArrayList<Long>()
    if (budget <= 0) return Pair("", 0)
    // the prompt's last logits only, then one row per new token
    var logits = model.step(task.promptIds, bits, longArrayOf((task.promptIds.size - 1).toLong()))
    while (true) {
        val last = logits[logits.size - 1]
        var token = 0
        for (i in last.indices) if (last[i] > last[token]) token = i
        out.add(token.toLong())
        if (token.toLong() in eos || out.size >= budget) break
        logits = model.step(longArrayOf(token.toLong()), bits, longArrayOf(0))
    }
    return Pair(model.decode(out.filter { it !in eos }), out.size)
}

/** Resident memory of this process (VmRSS), in MiB. */
fun residentMiB(): Double {
    val line = File("/proc/self/status").readLines().firstOrNull { it.startsWith("VmRSS:") } ?: return -1.0
    return line.split(Regex("\\s+"))[1].toDouble() / 1024.0
}

fun runTask(model: BundleModel, task: DemoTask, bits: Int): TaskResult {
    val t0 = System.nanoTime()
    val answer: String
    val tokens: Int
    if (task.kind == "choose") {
        answer = scoreOptions(model, task, bits).first
        var scored = 0
        for (option in task.options) scored += task.promptIds.size + option.ids.size
        tokens = scored
    } else {
        val generated = generate(model, task, bits)
        answer = generated.first
        tokens = generated.second
    }
    val ms = (System.nanoTime() - t0) / 1e6
    return TaskResult(task, bits, answer, ms, tokens / (ms / 1000.0), residentMiB(), System.identityHashCode(model.session))
}
