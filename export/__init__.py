"""export/: PyTorch reference model, checkpoints, ONNX/GGUF export and TensorRT engine builds. Needs torch."""
