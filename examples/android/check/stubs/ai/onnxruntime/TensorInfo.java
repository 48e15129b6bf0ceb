package ai.onnxruntime;

// Compile-check stub (see OnnxValue.java).
public class TensorInfo {
    public long[] getShape() { throw new UnsupportedOperationException("stub"); }
}
