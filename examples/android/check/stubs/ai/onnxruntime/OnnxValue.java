package ai.onnxruntime;

// Compile-check stub: the subset of onnxruntime's Java API the demo uses, same signatures.
public interface OnnxValue extends AutoCloseable {
    @Override
    void close();
}
