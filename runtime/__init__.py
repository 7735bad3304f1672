"""runtime/: the light runtime. numpy + onnxruntime/TensorRT + llama-cpp-python + soundfile; never torch or transformers."""
