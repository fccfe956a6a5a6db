"""regiontrt: one ONNX model, per-region TensorRT engines."""

__version__ = "0.1.0"
