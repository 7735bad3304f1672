"""The audio side behind one small interface: log-mel windows in, LLM embeddings out.

    backend = open_backend(bundle, manifest, "auto")
    embeddings = backend.encode(mel)   # (B, 128, 3000) float32 -> (B, 750, n_embd) float32
    backend.times                      # ms per stage: temporal_encoder, global_encoder, fusion, projector

Which backend runs is decided by runtime/backend_choice.py (what is installed, which GPU, which engines the
manifest records); how each one is opened is the ``OPENERS`` table below. ONNX Runtime serves ``ort-cpu``,
``ort-cuda`` and ``ort-trt`` through its execution providers; ``tensorrt`` runs the bundle's own engines
(runtime/trt_backend.py). The pipeline only ever sees :class:`AudioBackend`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from gamma_rt.errors import BundleError, GammaError
from gamma_rt.manifest import AUDIO_COMPONENTS, MANIFEST_NAME, Manifest

from .backend_choice import Choice, Machine, choose_backend, ort_providers, probe
from .timings import StageTimes

PRECISIONS = ("fp32", "fp16")


class AudioBackend(Protocol):
    """What the pipeline needs from an audio backend."""

    name: str  # "ort-cpu", "ort-cuda", "ort-trt", "tensorrt"
    precision: str  # "fp32" | "fp16"
    reason: str  # why this backend was chosen, one line
    times: StageTimes  # per-stage ms, summed over calls

    def encode(self, mel: np.ndarray) -> np.ndarray:
        """(B, n_mels, 3000) float32 log-mel -> (B, tokens_per_window, n_embd) float32 embeddings."""

    def close(self) -> None: ...


def component_key(name: str, precision: str) -> str:
    """Manifest key of an audio component: ``fusion`` (fp32) or ``fusion.fp16``."""
    return name if precision == "fp32" else f"{name}.{precision}"


class OrtBackend:
    """The four ONNX graphs of one precision in ONNX Runtime sessions, run one after the other.

    ``providers`` is ONNX Runtime's list (best first), so the CUDA and TensorRT execution providers plug
    in without changing anything else. ORT releases the GIL while it runs, so the pipeline can prefill the
    decoder on the main thread while this encodes the next window on a worker thread.
    """

    def __init__(self, bundle: str | Path, manifest: Manifest, precision: str = "fp32", providers: list | None = None,
                 threads: int | None = None, name: str = "ort-cpu", reason: str = ""):
        import onnxruntime as ort

        self.bundle, self.name, self.precision, self.reason = Path(bundle), name, precision, reason
        self.times = StageTimes()
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.sessions = {}
        for stage in AUDIO_COMPONENTS:
            c = manifest.component(component_key(stage, precision))
            path = self.bundle / c.file
            try:
                self.sessions[stage] = ort.InferenceSession(str(path), options,
                                                            providers=providers or ["CPUExecutionProvider"])
            except Exception as e:  # ORT raises its own Fail/InvalidGraph types for a file it cannot load
                raise BundleError(f"{path}: ONNX Runtime cannot load components.{component_key(stage, precision)} "
                                  f"({str(e).splitlines()[0][:200]})") from None
        want = manifest.component(component_key("temporal_encoder", precision)).inputs[0].shape[1:]
        self.mel_shape = tuple(want)

    def _run(self, stage: str, feed: dict[str, np.ndarray]) -> np.ndarray:
        with self.times.stage(stage):
            return self.sessions[stage].run(None, feed)[0]

    def encode(self, mel: np.ndarray) -> np.ndarray:
        """(B, n_mels, 3000) float32 log-mel -> (B, tokens_per_window, n_embd) float32."""
        mel = np.ascontiguousarray(mel, dtype=np.float32)
        if mel.ndim != 3 or tuple(mel.shape[1:]) != self.mel_shape:
            raise GammaError(f"mel of shape {mel.shape}: the bundle's encoders take (batch, {self.mel_shape[0]}, "
                             f"{self.mel_shape[1]})")
        temporal = self._run("temporal_encoder", {"mel": mel})
        global_ = self._run("global_encoder", {"mel": mel})
        fused = self._run("fusion", {"temporal": temporal, "global": global_})
        return self._run("projector", {"fused": fused})

    def close(self) -> None:
        self.sessions = {}


class TrtBackend:
    """The bundle's TensorRT engines (runtime/trt_backend.py's TrtChain) behind :class:`AudioBackend`.

    The chain runs the four engines as one CUDA graph, so only the whole audio side is timed
    (as ``temporal_encoder`` + ... would be meaningless); it is recorded under ``audio_side``."""

    def __init__(self, bundle: str | Path, manifest: Manifest, precision: str, reason: str):
        from .trt_backend import TrtChain

        self.name, self.precision, self.reason = "tensorrt", precision, reason
        self.times = StageTimes()
        self.chain = TrtChain(bundle, manifest, precision)
        self.chain.open()

    def encode(self, mel: np.ndarray) -> np.ndarray:
        with self.times.stage("audio_side"):
            return self.chain.encode(mel)

    def close(self) -> None:
        self.chain.close()


def _open_ort(bundle, manifest, choice: Choice, precision: str, threads: int | None) -> AudioBackend:
    providers = ort_providers(choice.backend, bundle, fp16=precision == "fp16")
    return OrtBackend(bundle, manifest, precision, providers, threads, choice.backend, choice.reason)


def _open_trt(bundle, manifest, choice: Choice, precision: str, threads: int | None) -> AudioBackend:
    return TrtBackend(bundle, manifest, precision, choice.reason)


# Backend name -> how to open it. A new backend is one row here and one in backend_choice.BACKENDS.
OPENERS: dict[str, Callable[..., AudioBackend]] = {
    "ort-cpu": _open_ort,
    "ort-cuda": _open_ort,
    "ort-trt": _open_ort,
    "tensorrt": _open_trt,
}


def available_precisions(manifest: Manifest) -> list[str]:
    """Precisions for which the bundle holds all four audio graphs."""
    return [p for p in PRECISIONS if all(component_key(c, p) in manifest.components for c in AUDIO_COMPONENTS)]


def pick_precision(requested: str, backend: str, manifest: Manifest, bundle: str | Path = ".") -> str:
    """``auto``: fp16 on a GPU backend when the bundle has it (half the memory traffic), else fp32
    (ONNX Runtime's CPU kernels are slower in fp16 and the fp32 graphs are the exact ones)."""
    have = available_precisions(manifest)
    where = Path(bundle) / MANIFEST_NAME
    if not have:
        raise BundleError(f"{where}: field 'components' has no complete set of audio graphs "
                          f"({', '.join(AUDIO_COMPONENTS)}); run `gamma-rt export onnx`")
    if requested == "auto":
        if backend != "ort-cpu" and "fp16" in have:
            return "fp16"
        return "fp32" if "fp32" in have else have[0]
    if requested not in PRECISIONS:
        raise GammaError(f"--precision {requested!r}: choose auto, {', '.join(PRECISIONS)}")
    if requested not in have:
        raise BundleError(f"{where}: no {requested} audio graphs (has {', '.join(have)}); "
                          f"run `gamma-rt export onnx --precision {requested}`")
    return requested


def open_backend(bundle: str | Path, manifest: Manifest, name: str = "auto", precision: str = "auto",
                 threads: int | None = None, machine: Machine | None = None) -> AudioBackend:
    """The audio backend ``name`` ("auto" picks the best available; ``.reason`` says which and why)."""
    machine = machine or probe()
    # TensorRT engines are built per precision; ask for fp16 engines unless fp32 was requested.
    trt_precision = "fp16" if precision == "auto" else precision
    choice = choose_backend(name, manifest, machine, trt_precision, bundle)
    if choice.backend == "tensorrt":
        return OPENERS["tensorrt"](bundle, manifest, choice, trt_precision, threads)
    chosen = pick_precision(precision, choice.backend, manifest, bundle)
    return OPENERS[choice.backend](bundle, manifest, choice, chosen, threads or _default_threads())


def _default_threads() -> int:
    return max(1, os.cpu_count() or 1)
