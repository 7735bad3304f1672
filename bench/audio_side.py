"""Per-window cost of the audio side: front end, each expert, fusion, projector.

The same 30 s window goes through the bundle's ONNX graphs under ONNX Runtime (every precision the
bundle holds: fp32, fp16) and through the checkpoint's PyTorch modules in eager mode, at the same
thread count, so the ratios compare ways of running one model, not two inputs.

Shapes, one window (batch 1):
    samples  (window_samples,) float32, 16 kHz
    mel      (1, n_mels, 3000) float32
    expert   (1, 1500, d_expert)        x 2 (temporal, global)
    fusion   (1, 1500, d_expert)
    projector(1, 750, d_llm)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gamma_rt.manifest import AUDIO_COMPONENTS, Manifest

from .timing import Stats, measure

ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


def onnx_variants(manifest: Manifest) -> dict[str, dict[str, str]]:
    """Precision -> {stage: component name} for every complete set of audio graphs in the bundle.

    The fp32 graphs are components ``temporal_encoder`` ...; other precisions may sit beside them as
    ``temporal_encoder.fp16`` ...; a set counts only if all four stages are there.
    """
    found: dict[str, dict[str, str]] = {}
    for name, c in manifest.components.items():
        stage = name.split(".", 1)[0]
        if c.kind == "onnx" and stage in AUDIO_COMPONENTS:
            found.setdefault(c.precision, {})[stage] = name
    return {p: stages for p, stages in found.items() if set(stages) == set(AUDIO_COMPONENTS)}


def time_front_end(samples: np.ndarray, n_mels: int, repeat: int, warmup: int) -> tuple[Stats, np.ndarray]:
    """The numpy log-mel front end on one window; returns its timing and the (1, n_mels, frames) mel."""
    from gamma_rt.runtime.mel import log_mel_spectrogram

    stats = measure(lambda: log_mel_spectrogram(samples, n_mels), repeat, warmup)
    return stats, log_mel_spectrogram(samples, n_mels)[None].astype(np.float32)


def time_onnx(bundle: str | Path, stages: dict[str, str], mel: np.ndarray, threads: int, repeat: int,
              warmup: int) -> dict[str, Stats]:
    """ms per window of each audio stage under ONNX Runtime (CPU), fed with the previous stage's output."""
    import onnxruntime as ort

    manifest = Manifest.read(bundle)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    sessions = {
        stage: ort.InferenceSession(str(Path(bundle) / manifest.component(name).file), opts,
                                    providers=["CPUExecutionProvider"])
        for stage, name in stages.items()
    }

    def run(stage: str, *arrays: np.ndarray):
        sess = sessions[stage]
        feeds = {i.name: a.astype(ORT_DTYPES[i.type]) for i, a in zip(sess.get_inputs(), arrays)}
        return lambda: sess.run(None, feeds)[0]

    return _chain(run, mel, repeat, warmup)


def time_eager(checkpoint: str | Path, mel: np.ndarray, threads: int, repeat: int, warmup: int) -> dict[str, Stats]:
    """ms per window of each audio stage as PyTorch modules in eager mode (fp32, inference mode)."""
    import torch

    from gamma_rt.export.checkpoint import Checkpoint

    torch.set_num_threads(threads)
    ckpt = Checkpoint(checkpoint)
    modules = {name: ckpt.component(name).eval() for name in AUDIO_COMPONENTS}

    def run(stage: str, *arrays: np.ndarray):
        tensors = [torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)) for a in arrays]
        module = modules[stage]

        def call():
            with torch.inference_mode():
                out = module(*tensors)
            return (out.last_hidden_state if hasattr(out, "last_hidden_state") else out).numpy()

        return call

    return _chain(run, mel, repeat, warmup)


def _chain(run, mel: np.ndarray, repeat: int, warmup: int) -> dict[str, Stats]:
    """Time each stage on the real output of the one before: mel -> experts -> fusion -> projector."""
    timings = {}
    outputs = {}
    for stage, inputs in (("temporal_encoder", (mel,)), ("global_encoder", (mel,)), ("fusion", None),
                          ("projector", None)):
        if stage == "fusion":
            inputs = (outputs["temporal_encoder"], outputs["global_encoder"])
        elif stage == "projector":
            inputs = (outputs["fusion"],)
        call = run(stage, *inputs)
        timings[stage] = measure(call, repeat, warmup)
        outputs[stage] = np.asarray(call(), dtype=np.float32)
    return timings
