package ai.onnxruntime;

// Compile-check stub (see OnnxValue.java).
public abstract class OnnxTensorLike implements OnnxValue {
    public TensorInfo getInfo() { throw new UnsupportedOperationException("stub"); }
}
