package dev.otaro.demo

import ai.onnxruntime.OnnxTensor
import ai.onnxruntime.OrtEnvironment
import ai.onnxruntime.OrtSession
import java.io.File
import java.nio.FloatBuffer
import java.nio.LongBuffer

// The demo's engine: ONE onnxruntime session, loaded once, run at a precision per call.
// Mirrors examples/mobile/bundle_runner.py function by function (the tested specification).

/**
 * One ONNX session; [step] runs tokens at E5M<bits> against the KV cache.
 * [customOpLibrary]: path of the project's fused SEFP kernel library for onnxruntime, if the app
 * ships one (see README); without it, stock onnxruntime runs SEFPLinear's function body (slow).
 */
class BundleModel(dir: File, val bundle: DemoBundle, customOpLibrary: String? = null) : AutoCloseable {
    private val env: OrtEnvironment = OrtEnvironment.getEnvironment()
    val session: OrtSession = createSession(File(dir, bundle.modelFile).path, customOpLibrary)
    private var cache: Map<String, OnnxTensor> = emptyMap()
    // The result holding the present K/V tensors that [cache] points into: closed when replaced.
    private var cacheOwner: AutoCloseable? = null
    private var position = 0L

    init {
        reset()
    }

    private fun createSession(modelPath: String, customOpLibrary: String?): OrtSession {
        val options = OrtSession.SessionOptions()
        if (customOpLibrary != null) options.registerCustomOpLibrary(customOpLibrary)
        return env.createSession(modelPath, options)
    }

    fun reset() {
        closeCache()
        cache = bundle.io.cache.associate { slot ->
            slot.input to OnnxTensor.createTensor(env, FloatBuffer.allocate(0), slot.emptyShape)
        }
        position = 0
    }

    private fun closeCache() {
        val owner = cacheOwner
        if (owner != null) owner.close() else cache.values.forEach { it.close() }
        cacheOwner = null
    }

    /** Logits [ids.size][vocab] for [ids] at positions position.., appended to the cache. */
    fun step(ids: LongArray, bits: Int): Array<FloatArray> {
        require(bits in bundle.precisions) { "E5M$bits is not served by this model (${bundle.precisions})" }
        val io = bundle.io
        val n = ids.size
        val owned = ArrayList<OnnxTensor>()
        fun own(t: OnnxTensor): OnnxTensor { owned.add(t); return t }
        val feeds = HashMap<String, OnnxTensor>(cache)
        feeds[io.inputIds] = own(OnnxTensor.createTensor(env, LongBuffer.wrap(ids), longArrayOf(1, n.toLong())))
        // A 0-dim int64 tensor: the per-call precision input of the one loaded program.
        feeds[io.bits] = own(OnnxTensor.createTensor(env, LongBuffer.wrap(longArrayOf(bits.toLong())), LongArray(0)))
        if (io.positionName != null) {
            val pos = LongArray(n) { position + it }
            val shape = if (io.positionRank == 1) longArrayOf(n.toLong()) else longArrayOf(1, n.toLong())
            feeds[io.positionName] = own(OnnxTensor.createTensor(env, LongBuffer.wrap(pos), shape))
        }
        if (io.attentionMask != null) {
            val total = position + n
            val ones = LongArray(total.toInt()) { 1L }
            feeds[io.attentionMask] = own(OnnxTensor.createTensor(env, LongBuffer.wrap(ones), longArrayOf(1, total)))
        }
        val outputNames = LinkedHashSet<String>()
        outputNames.add(io.logits)
        io.cache.forEach { outputNames.add(it.output) }
        val result = try {
            session.run(feeds, outputNames)
        } finally {
            owned.forEach { it.close() }
        }
        val logitsTensor = result.get(io.logits).get() as OnnxTensor
        val vocab = logitsTensor.info.shape[2].toInt()
        val flat = logitsTensor.floatBuffer
        val logits = Array(n) { row -> FloatArray(vocab) { flat.get(row * vocab + it) } }
        closeCache()
        cache = io.cache.associate { slot -> slot.input to (result.get(slot.output).get() as OnnxTensor) }
        cacheOwner = result
        position += n
        return logits
    }

    fun decode(ids: List<Long>): String {
        val out = java.io.ByteArrayOutputStream()
        ids.forEach { out.write(bundle.tokenBytes[it.toInt()]) }
        return String(out.toByteArray(), Charsets.UTF_8)
    }

    override fun close() {
        closeCache()
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
        val logits = model.step(prompt + option.ids, bits)
        var sum = 0.0
        for (i in option.ids.indices) {
            val row = logits[prompt.size - 1 + i]
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
    val budget = minOf(task.maxNewTokens, model.bundle.maxSeqLen - task.promptIds.size)
    var logits = model.step(task.promptIds, bits)
    val out = ArrayList<Long>()
    while (budget > 0) {
        val last = logits[logits.size - 1]
        var token = 0
        for (i in last.indices) if (last[i] > last[token]) token = i
        out.add(token.toLong())
        if (token.toLong() in eos || out.size >= budget) break
        logits = model.step(longArrayOf(token.toLong()), bits)
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
