package ai.onnxruntime;

import java.nio.FloatBuffer;
import java.nio.IntBuffer;
import java.nio.LongBuffer;

// Compile-check stub (see OnnxValue.java).
public class OnnxTensor extends OnnxTensorLike {
    public static OnnxTensor createTensor(OrtEnvironment env, FloatBuffer data, long[] shape) throws OrtException {
        throw new UnsupportedOperationException("stub");
    }
    public static OnnxTensor createTensor(OrtEnvironment env, IntBuffer data, long[] shape) throws OrtException {
        throw new UnsupportedOperationException("stub");
    }
    public static OnnxTensor createTensor(OrtEnvironment env, LongBuffer data, long[] shape) throws OrtException {
        throw new UnsupportedOperationException("stub");
    }
    public FloatBuffer getFloatBuffer() { throw new UnsupportedOperationException("stub"); }
    @Override
    public void close() {}
}
