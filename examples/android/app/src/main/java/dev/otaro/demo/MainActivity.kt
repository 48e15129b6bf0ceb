package dev.otaro.demo

import android.app.Activity
import android.graphics.Typeface
import android.os.Bundle
import android.widget.ArrayAdapter
import android.widget.Button
import android.widget.LinearLayout
import android.widget.ScrollView
import android.widget.Spinner
import android.widget.TextView
import java.io.File
import java.util.concurrent.Executors

// One screen: a precision picker per task (preset from the policy in the bundle), a "Run session"
// button, and a log. The model is loaded ONCE (first run) and reused by every task and run.
class MainActivity : Activity() {
    private val worker = Executors.newSingleThreadExecutor()
    private var model: BundleModel? = null
    private var loads = 0
    private lateinit var log: TextView

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        val root = LinearLayout(this)
        root.orientation = LinearLayout.VERTICAL
        root.setPadding(32, 32, 32, 32)
        log = TextView(this)
        log.typeface = Typeface.MONOSPACE
        val dir = bundleDir()
        val bundle = try {
            DemoBundle.parse(File(dir, "demo_bundle.json").readText())
        } catch (e: Exception) {
            log.text = "No demo bundle in $dir ($e).\nSee examples/android/README.md: adb push the bundle there."
            root.addView(log)
            setContentView(root)
            return
        }
        val labels = bundle.precisions.map { "E5M$it" }
        val pickers = bundle.tasks.map { task ->
            val row = LinearLayout(this)
            row.orientation = LinearLayout.HORIZONTAL
            val name = TextView(this)
            name.text = "${task.name} (${task.kind})  "
            val spinner = Spinner(this)
            spinner.adapter = ArrayAdapter(this, android.R.layout.simple_spinner_dropdown_item, labels)
            spinner.setSelection(maxOf(0, bundle.precisions.indexOf(task.policyBits)))
            row.addView(name)
            row.addView(spinner)
            root.addView(row)
            spinner
        }
        val runButton = Button(this)
        runButton.text = "Run session"
        runButton.setOnClickListener {
            runButton.isEnabled = false
            val chosen = pickers.map { bundle.precisions[it.selectedItemPosition] }
            worker.execute { runSession(dir, bundle, chosen) { runOnUiThread { runButton.isEnabled = true } } }
        }
        root.addView(runButton)
        root.addView(log)
        val scroll = ScrollView(this)
        scroll.addView(root)
        setContentView(scroll)
    }

    /** The fused SEFP kernel library, if the APK ships it (app/src/main/jniLibs/<abi>/, see README). */
    private fun fusedKernelLibrary(): String? {
        val lib = File(applicationInfo.nativeLibraryDir, "libotaro_sefp_onnxruntime.so")
        return if (lib.isFile) lib.path else null
    }

    /** Where `adb push BUNDLE_DIR /sdcard/Android/data/dev.otaro.demo/files/bundle` puts it. */
    private fun bundleDir(): File = File(getExternalFilesDir(null), "bundle")

    private fun runSession(dir: File, bundle: DemoBundle, bits: List<Int>, done: () -> Unit) {
        try {
            var m = model
            if (m == null) {
                val t0 = System.nanoTime()
                m = BundleModel(dir, bundle, fusedKernelLibrary())
                model = m
                loads += 1
                append("kernels: " + (fusedKernelLibrary()?.let { "fused ($it)" } ?: "stock onnxruntime (function body)"))
                append("loaded ${bundle.modelFile} in ${"%.2f".format((System.nanoTime() - t0) / 1e9)} s; " +
                    "session #${System.identityHashCode(m.session)}; RSS ${"%.1f".format(residentMiB())} MiB")
            }
            bundle.tasks.forEachIndexed { i, task ->
                val r = runTask(m, task, bits[i])
                append("%-13s E5M%d %8.1f ms %7.1f tok/s RSS %6.1f MiB session #%d\n  -> %s".format(
                    task.name, r.bits, r.latencyMs, r.tokensPerSecond, r.rssMiB, r.sessionId, r.answer))
            }
            append("loads so far: $loads (one session for every task and precision)\n")
        } catch (e: Exception) {
            append("error: $e")
        } finally {
            done()
        }
    }

    private fun append(line: String) = runOnUiThread { log.append(line + "\n") }

    override fun onDestroy() {
        worker.shutdown()
        model?.close()
        super.onDestroy()
    }
}
