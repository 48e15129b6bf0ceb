package ai.onnxruntime;

import java.util.Map;
import java.util.Optional;
import java.util.Set;

// Compile-check stub (see OnnxValue.java).
public class OrtSession implements AutoCloseable {
    public static class SessionOptions implements AutoCloseable {
        public SessionOptions() {}
        public void registerCustomOpLibrary(String path) throws OrtException {}
        @Override
        public void close() {}
    }

    public static class Result implements AutoCloseable, Iterable<Map.Entry<String, OnnxValue>> {
        public Optional<OnnxValue> get(String key) { throw new UnsupportedOperationException("stub"); }
        @Override
        public java.util.Iterator<Map.Entry<String, OnnxValue>> iterator() { throw new UnsupportedOperationException("stub"); }
        @Override
        public void close() {}
    }

    public Result run(Map<String, ? extends OnnxTensorLike> inputs, Set<String> requestedOutputs) throws OrtException {
        throw new UnsupportedOperationException("stub");
    }
    // Pinned outputs: caller-allocated values onnxruntime writes into (not owned by the Result).
    public Result run(
            Map<String, ? extends OnnxTensorLike> inputs,
            Set<String> requestedOutputs,
            Map<String, ? extends OnnxValue> pinnedOutputs) throws OrtException {
        throw new UnsupportedOperationException("stub");
    }
    @Override
    public void close() throws OrtException {}
}
