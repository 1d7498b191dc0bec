"""Running graphs: the ONNX Runtime session, the dynamic batcher in front of it, IO-binding buffers."""
