"""Which audio backend runs the four graphs: TensorRT engines, ONNX Runtime's TensorRT or CUDA execution
providers, or ONNX Runtime on CPU, and why.

The decision is plain data in, plain data out (what is installed, which GPU, which engines the manifest
records), so it is tested on any machine; :func:`probe` reads the real machine. With ``--backend auto``
the best available one wins and the reason is printed; asking for one explicitly that cannot run is an
error that says why (an engine built for another GPU raises EngineMismatch).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

from gamma_rt.errors import EngineMismatch, GammaError
from gamma_rt.manifest import MANIFEST_NAME, Manifest
from gamma_rt.runtime.engine_record import GpuIdentity, find_engines

# Best first. "tensorrt": our own engines through the TensorRT runtime (runtime/trt_backend.py).
BACKENDS = ("tensorrt", "ort-trt", "ort-cuda", "ort-cpu")
ORT_PROVIDER = {"ort-trt": "TensorrtExecutionProvider", "ort-cuda": "CUDAExecutionProvider", "ort-cpu": "CPUExecutionProvider"}


@dataclass(frozen=True)
class Machine:
    """What this machine can run: the TensorRT + cuda-python packages, ORT's providers, the GPU (if any)."""

    has_tensorrt: bool
    ort_providers: tuple[str, ...]
    gpu: GpuIdentity | None = None


@dataclass
class Choice:
    backend: str
    reason: str
    engines: dict = field(default_factory=dict)  # the fitting engine record, for "tensorrt"


def probe() -> Machine:
    """The real machine. Never raises for a missing GPU or package: that is what it reports."""
    import onnxruntime as ort

    has_trt = all(importlib.util.find_spec(m) is not None for m in ("tensorrt", "cuda"))
    gpu = None
    if has_trt:
        from gamma_rt.runtime.trt_backend import detect_gpu

        try:
            gpu = detect_gpu()
        except GammaError:
            gpu = None  # packages present but no usable GPU: reported as "no GPU" below
    return Machine(has_trt, tuple(ort.get_available_providers()), gpu)


def choose_backend(requested: str, manifest: Manifest, machine: Machine, precision: str = "fp16",
                   bundle: str | Path = ".") -> Choice:
    """Pick the backend for ``requested`` ("auto" or one of BACKENDS)."""
    where = str(Path(bundle) / MANIFEST_NAME)
    if requested != "auto" and requested not in BACKENDS:
        raise GammaError(f"--backend {requested!r}: choose auto or one of {', '.join(BACKENDS)}")
    notes: list[str] = []
    if requested in ("auto", "tensorrt"):
        try:
            if not machine.has_tensorrt:
                raise GammaError("TensorRT or cuda-python is not installed")
            if machine.gpu is None:
                raise GammaError("no CUDA GPU is visible")
            record = find_engines(manifest.engines, machine.gpu, precision, where)
            return Choice("tensorrt", f"TensorRT engines {record['dir']} fit this {machine.gpu.name}", record)
        except EngineMismatch as e:
            if requested == "tensorrt":
                raise
            notes.append(f"tensorrt skipped: {e}")
        except GammaError as e:
            if requested == "tensorrt":
                raise GammaError(f"--backend tensorrt: {e}") from None
            notes.append(f"tensorrt skipped: {e}")
    for name in ("ort-trt", "ort-cuda", "ort-cpu"):
        if requested not in ("auto", name):
            continue
        if ORT_PROVIDER[name] in machine.ort_providers:
            why = "the best available" if requested == "auto" else "as asked"
            return Choice(name, "; ".join([f"ONNX Runtime {ORT_PROVIDER[name]}, {why}", *notes]))
        if requested == name:
            raise GammaError(
                f"--backend {name}: this onnxruntime has no {ORT_PROVIDER[name]} "
                f"(has {', '.join(machine.ort_providers)}); install onnxruntime-gpu or use --backend auto"
            )
    raise GammaError(f"no audio backend can run here (onnxruntime providers: {', '.join(machine.ort_providers)})")


def ort_providers(backend: str, bundle: str | Path, fp16: bool = True) -> list:
    """The ``providers`` argument of ``onnxruntime.InferenceSession`` for an ORT backend (best first, CPU last).

    ORT's TensorRT provider keeps its own engine and timing caches in BUNDLE/engines/ort-trt/, so the
    second start does not rebuild."""
    cache = str(Path(bundle) / "engines" / "ort-trt")
    chain = {
        "ort-trt": [
            ("TensorrtExecutionProvider", {"trt_fp16_enable": fp16, "trt_engine_cache_enable": True,
                                           "trt_engine_cache_path": cache, "trt_timing_cache_enable": True,
                                           "trt_timing_cache_path": cache}),
            ("CUDAExecutionProvider", {}),
        ],
        "ort-cuda": [("CUDAExecutionProvider", {"cudnn_conv_algo_search": "EXHAUSTIVE"})],
        "ort-cpu": [],
    }
    if backend not in chain:
        raise GammaError(f"{backend!r} is not an ONNX Runtime backend ({', '.join(chain)})")
    return [*chain[backend], "CPUExecutionProvider"]
