package ai.onnxruntime;

// Compile-check stub (see OnnxValue.java).
public class OrtException extends Exception {
    public OrtException(String message) { super(message); }
}
