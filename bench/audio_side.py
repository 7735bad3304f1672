"""Per-window cost of the audio side: the front end, then each graph of the bundle's audio chain.

The chain is the manifest's (``manifest.audio.chain``): GaMMA's two experts, fusion and projector, or a
flamingo's encoder and projector, whatever their names. One 30 s window's feeds are made exactly as the
runtime makes them (``runtime.embed.window_feeds``: mel, mel_mask, window_index) and encoded by the
runtime's own audio backend (``runtime.backends.open_backend``, from the bench's RuntimeOptions) at every
precision the bundle holds; each graph's time is the backend's own per-stage figure. The PyTorch baseline
runs the same mel in eager mode at the same threads (the family's own graph modules here, walked along the
same chain; a flamingo folder's transformers class in bench/hf_baseline.py), so the ratios compare ways of
running one model, not two inputs.

Shapes, one window (batch 1), GaMMA / a flamingo:
    samples  (window_samples,) float32, 16 kHz
    mel      (1, n_mels, 3000) float32; mel_mask (1, 3000) int64; window_index (1,) int64
    encoders (1, 1500, d_expert) x 2 (temporal, global) / (1, 750, d_encoder), pooled inside the graph
    fusion   (1, 1500, d_expert) / none
    projector(1, 750, d_llm)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gamma_rt.manifest import Manifest

from .timing import Stats, measure, summarize


def window_feeds(samples: np.ndarray, manifest: Manifest) -> dict[str, np.ndarray]:
    """The chain's feeds for one full window of ``samples`` (window_samples,) float32, as the runtime makes them."""
    from gamma_rt.runtime.embed import AudioLayout, window_feeds as runtime_feeds
    from gamma_rt.runtime.windows import Window

    layout = AudioLayout.from_manifest(manifest.audio)
    window = Window(0, 0.0, len(samples) / layout.sample_rate, samples, len(samples))
    return runtime_feeds(window, layout)


def time_front_end(samples: np.ndarray, manifest: Manifest, repeat: int, warmup: int) -> tuple[Stats, dict]:
    """The runtime's front end (log-mel and mask) on one window; its timing and the window's feeds."""
    stats = measure(lambda: window_feeds(samples, manifest), repeat, warmup)
    return stats, window_feeds(samples, manifest)


def precisions(manifest: Manifest, requested: str) -> list[str]:
    """The audio precisions to time: every one the bundle holds a whole chain of for ``auto``, else the one asked."""
    from gamma_rt.runtime.backends import available_precisions

    return available_precisions(manifest) if requested == "auto" else [requested]


def time_backend(bundle: str | Path, manifest: Manifest, options, precision: str, feeds: dict[str, np.ndarray],
                 repeat: int, warmup: int) -> tuple[str, str, dict[str, Stats]]:
    """ms per window of each stage the backend times (each graph of the chain under ONNX Runtime), with the
    backend ``options.backend`` opens at ``precision``; returns (way, why that backend, {stage: Stats}). The
    way is ``onnxruntime-<precision>`` for ORT on the CPU (the row the eager baseline is compared with), else
    ``<backend>-<precision>``."""
    from gamma_rt.runtime.backends import open_backend

    backend = open_backend(bundle, manifest, options.backend, precision, options.threads)
    try:
        for _ in range(warmup):
            backend.encode(feeds)
        samples: dict[str, list[float]] = {}
        for _ in range(repeat):
            backend.times.reset()
            backend.encode(feeds)
            for stage, ms in backend.times.ms.items():
                samples.setdefault(stage, []).append(ms)
        way = f"onnxruntime-{backend.precision}" if backend.name == "ort-cpu" else f"{backend.name}-{backend.precision}"
        return way, backend.reason, {stage: summarize(v) for stage, v in samples.items()}
    finally:
        backend.close()


def time_eager(checkpoint: str | Path, mel: np.ndarray, threads: int, repeat: int, warmup: int) -> dict[str, Stats]:
    """ms per window of each graph of the checkpoint's audio chain as its family's PyTorch modules (the
    modules ``export onnx`` traces) in eager mode, fp32, inference mode; each on the real output of the
    steps before it."""
    import torch

    from gamma_rt.audio_chain import read_chain
    from gamma_rt.export.cosine_report import chain_inputs
    from gamma_rt.export.families import detect

    torch.set_num_threads(threads)
    family = detect(checkpoint)
    graphs = {g.name: g for g in family.graphs()}
    modules = {name: g.build().eval() for name, g in graphs.items()}
    chain = read_chain(family.manifest_sections()["audio"]["chain"], str(checkpoint))
    values = chain_inputs(chain, np.ascontiguousarray(mel, dtype=np.float32))
    timings = {}
    for step in chain:
        tensors = [torch.from_numpy(np.ascontiguousarray(values[step.inputs[spec.name]]))
                   for spec in graphs[step.component].inputs]

        def call(module=modules[step.component], tensors=tensors):
            with torch.inference_mode():
                return module(*tensors).numpy()

        timings[step.component] = measure(call, repeat, warmup)
        values[next(iter(step.outputs.values()))] = np.asarray(call(), dtype=np.float32)
    return timings
