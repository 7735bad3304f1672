"""bench/: latency and throughput measurement of every stage, against the PyTorch reference."""
