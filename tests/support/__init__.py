"""What tests and benchmarks share: generated photos, a tiny ONNX model folder, the bounded load driver."""
