"""quant/: smaller variants (GGUF k-quants, int8/fp8 encoders) and their measured fidelity."""
