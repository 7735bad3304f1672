"""The audio side behind one small interface, and the one table of the backends that can run it.

    backend = open_backend(bundle, manifest, RuntimeOptions())
    embeddings = backend.encode({"mel": mel, "mel_mask": mask, "window_index": index})
    backend.times   # ms per stage (per audio graph)

A backend is one :class:`Backend` record in :data:`BACKENDS` (best first): its name, what it needs from the
machine, its ONNX Runtime execution providers or none, and how to open it. ``choose_backend`` and
``open_backend`` read only that table, so adding a backend is one entry. The decision is plain data in,
plain data out (what is installed, which GPU, which engines the manifest records), so it is tested on any
machine; :func:`probe` reads the real one. With ``auto`` the best available backend wins and ``reason`` says
why; asking for one that cannot run is an error that says why (an engine built for another GPU raises
EngineMismatch).

ONNX Runtime lists execution providers it cannot load (TensorrtExecutionProvider without TensorRT, CUDA
without its libraries) and quietly runs such a session on the CPU. So an ORT backend checks each session's
``get_providers()`` after creating it: an explicitly requested provider that did not load is a one-line
error, and ``auto`` moves on to the next backend, saying why; ``reason`` names the providers really running.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from gamma_rt.components import component_key
from gamma_rt.errors import BundleError, EngineMismatch, GammaError
from gamma_rt.machine import available_cores
from gamma_rt.manifest import MANIFEST_NAME, Manifest

from .engine_record import GpuIdentity, find_engines, fitting_precisions
from .timings import StageTimes

PRECISIONS = ("fp32", "fp16")  # of the ONNX graphs
# TensorRT engine precisions, as ``auto`` prefers them among those recorded for this GPU: the most faithful
# first, as for the decoder (fp16 is the fast path on every NVIDIA GPU since Volta); int8/fp8 engines run
# when asked for with --precision (the builder printed each one's embedding cosine against fp32)
ENGINE_PRECISIONS = ("fp16", "bf16", "int8", "fp8")
# The TensorRT major that ONNX Runtime's TensorRT provider links (libnvinfer.so.<major>): 10 for ORT 1.18-1.31+.
ORT_TRT_MAJOR = 10
# ORT's TensorRT provider builds one engine per profile; windows per call it is built for at most
ORT_TRT_MAX_BATCH = 8


class ProviderNotLoaded(GammaError):
    """ONNX Runtime created the session but not with the provider the backend stands for."""


class AudioBackend(Protocol):
    """What the pipeline needs from an audio backend."""

    name: str  # a Backend record's name
    precision: str  # "fp32" | "fp16"
    reason: str  # why this backend was chosen, one line
    times: StageTimes  # per-stage ms, summed over calls

    def encode(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """``mel`` (B, n_mels, frames), ``mel_mask`` (B, frames), ``window_index`` (B,) ->
        (B, tokens_per_window, n_embd) float32 embeddings."""

    def close(self) -> None: ...


@dataclass(frozen=True)
class Machine:
    """What this machine can run: the TensorRT + cuda-python packages, ORT's providers, the GPU (if any)."""

    has_tensorrt: bool
    ort_providers: tuple[str, ...]
    gpu: GpuIdentity | None = None
    trt_module: str = "tensorrt"  # or "tensorrt_lean" / "tensorrt_dispatch": only a runtime, no builder
    libnvinfer_majors: tuple[int, ...] = ()  # TensorRT shared libraries the dynamic loader finds


@dataclass
class Choice:
    backend: str
    reason: str
    engines: dict = field(default_factory=dict)  # the fitting engine record, for "tensorrt"
    precision: str = ""  # the engine precision chosen, for "tensorrt"


@dataclass(frozen=True)
class Backend:
    """One way to run the audio graphs.

    check(machine, manifest, precision, where) -> a Choice, or raises GammaError saying why it cannot run.
    providers(bundle, fp16, inputs) -> ONNX Runtime's ``providers`` list for a graph with ``inputs``
    (TensorSpecs) (ORT backends only).
    open(bundle, manifest, choice, precision, threads) -> an AudioBackend."""

    name: str
    check: Callable[..., Choice]
    open: Callable[..., AudioBackend]
    providers: Callable[..., list] | None = None
    # precision of the graphs it runs when "auto": TensorRT engines are built per precision
    picks_own_precision: bool = False
    # which ONNX graphs an ORT backend loads: "ort" (fused for ONNX Runtime) or "plain" (standard operators)
    graphs: str = "ort"
    device: str = "cpu"  # where ORT keeps the values between the chain's graphs (IOBinding)


# --- ONNX Runtime ---------------------------------------------------------------------------------------

def _ort_check(provider: str):
    def check(machine: Machine, manifest: Manifest, precision: str, where: str) -> Choice:
        if provider not in machine.ort_providers:
            raise GammaError(f"this onnxruntime has no {provider}; install onnxruntime-gpu or use --backend auto")
        return Choice("", f"ONNX Runtime {provider}")
    return check


def _ort_trt_check(machine: Machine, manifest: Manifest, precision: str, where: str) -> Choice:
    choice = _ort_check("TensorrtExecutionProvider")(machine, manifest, precision, where)
    if ORT_TRT_MAJOR not in machine.libnvinfer_majors:
        found = ", ".join(f"libnvinfer.so.{m}" for m in machine.libnvinfer_majors) or "no TensorRT library"
        raise GammaError(f"ONNX Runtime's TensorRT provider links TensorRT {ORT_TRT_MAJOR} "
                         f"(libnvinfer.so.{ORT_TRT_MAJOR}); found {found}")
    missing = [c for c in manifest.audio.components if f"{c}.plain" not in manifest.components]
    if missing:
        raise GammaError(f"{where}: components.{missing[0]}.plain missing: ORT's TensorRT provider takes the plain "
                         "graphs (add them with `gamma-rt export engines BUNDLE --checkpoint CKPT`)")
    return choice


def ort_graph_key(component: str, precision: str, graphs: str = "ort") -> str:
    """Manifest key of the graph an ORT backend loads: ``fusion.fp16``, or the plain fp32 ``fusion.plain`` for
    ORT's TensorRT provider (it picks fp16 itself, from ``trt_fp16_enable``)."""
    return f"{component}.plain" if graphs == "plain" else component_key(component, precision)


def _ort_open(bundle, manifest: Manifest, choice: Choice, precision: str, threads: int | None) -> AudioBackend:
    from .ort_backend import OrtBackend

    record = BACKENDS[choice.backend]
    return OrtBackend(bundle, manifest, precision, None, threads or _default_threads(), choice.backend,
                      choice.reason, record=record)


def _shapes(inputs, batch: int) -> str:
    return ",".join(f"{s.name}:{'x'.join(str(d) for d in (batch, *s.shape[1:]))}" for s in inputs)


def _trt_provider(bundle: Path, fp16: bool, inputs=()) -> list:
    # ORT's TensorRT provider keeps its engine and timing caches in BUNDLE/engines/ort-trt/, so the
    # second start does not rebuild; explicit profiles (1 to ORT_TRT_MAX_BATCH windows, opt 1) instead of
    # an engine rebuilt for every new batch size it meets.
    cache = str(bundle / "engines" / "ort-trt")
    options = {"trt_fp16_enable": fp16, "trt_engine_cache_enable": True, "trt_engine_cache_path": cache,
               "trt_timing_cache_enable": True, "trt_timing_cache_path": cache}
    batched = [s for s in inputs if s.shape and not isinstance(s.shape[0], int)]
    if batched:
        options.update(trt_profile_min_shapes=_shapes(batched, 1), trt_profile_opt_shapes=_shapes(batched, 1),
                       trt_profile_max_shapes=_shapes(batched, ORT_TRT_MAX_BATCH))
    return [("TensorrtExecutionProvider", options), ("CUDAExecutionProvider", {}), "CPUExecutionProvider"]


def _cuda_provider(bundle: Path, fp16: bool, inputs=()) -> list:
    return [("CUDAExecutionProvider", {"cudnn_conv_algo_search": "EXHAUSTIVE"}), "CPUExecutionProvider"]


def _cpu_provider(bundle: Path, fp16: bool, inputs=()) -> list:
    return ["CPUExecutionProvider"]


def check_providers(requested: list, running: list[str], where: str) -> None:
    """Raise ProviderNotLoaded when the first provider asked for is not among ``session.get_providers()``."""
    first = requested[0] if isinstance(requested[0], str) else requested[0][0]
    if first not in running:
        raise ProviderNotLoaded(f"{where}: ONNX Runtime did not load {first} (the session runs on "
                                f"{', '.join(running)}); check its libraries (CUDA, cuDNN, TensorRT)")


# --- TensorRT engines ----------------------------------------------------------------------------------

def _trt_check(machine: Machine, manifest: Manifest, precision: str, where: str) -> Choice:
    if not machine.has_tensorrt:
        raise GammaError("TensorRT or cuda-python is not installed")
    if machine.gpu is None:
        raise GammaError("no CUDA GPU is visible")
    dispatch = machine.trt_module == "tensorrt_dispatch"
    if precision == "auto":  # the best precision of which engines fit this GPU
        fits = fitting_precisions(manifest.engines, machine.gpu, dispatch)
        precision = next((p for p in ENGINE_PRECISIONS if p in fits), "fp16")
    record = find_engines(manifest.engines, machine.gpu, precision, where, needs_lean_runtime=dispatch)
    runtime = "" if machine.trt_module == "tensorrt" else f" on {machine.trt_module}"
    return Choice("tensorrt", f"TensorRT {precision} engines {record['dir']} fit this {machine.gpu.name}{runtime}",
                  record, precision)


def _trt_open(bundle, manifest: Manifest, choice: Choice, precision: str, threads: int | None) -> AudioBackend:
    return TrtBackend(bundle, manifest, precision, choice.reason)


class TrtBackend:
    """The bundle's TensorRT engines (runtime/trt_backend.py's TrtChain) behind :class:`AudioBackend`.

    The chain runs the engines as one CUDA graph, so only the whole audio side is timed, as ``audio_side``."""

    def __init__(self, bundle: str | Path, manifest: Manifest, precision: str, reason: str):
        from .trt_backend import TrtChain

        self.name, self.precision, self.reason = "tensorrt", precision, reason
        self.times = StageTimes()
        self.chain = TrtChain(bundle, manifest, precision)
        self.chain.open()
        if self.chain.graph_note:
            self.reason += f"; {self.chain.graph_note}"

    def encode(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        with self.times.stage("audio_side"):
            return self.chain.encode(feeds)

    def close(self) -> None:
        self.chain.close()


# --- the table -----------------------------------------------------------------------------------------

_BACKEND_LIST = (
    Backend("tensorrt", _trt_check, _trt_open, picks_own_precision=True),
    Backend("ort-trt", _ort_trt_check, _ort_open, _trt_provider, graphs="plain", device="cuda"),
    Backend("ort-cuda", _ort_check("CUDAExecutionProvider"), _ort_open, _cuda_provider, device="cuda"),
    Backend("ort-cpu", _ort_check("CPUExecutionProvider"), _ort_open, _cpu_provider),
)
BACKENDS: dict[str, Backend] = {b.name: b for b in _BACKEND_LIST}  # best first


def probe() -> Machine:
    """The real machine. Never raises for a missing GPU or package: that is what it reports."""
    import onnxruntime as ort

    module = next((m for m in ("tensorrt", "tensorrt_lean", "tensorrt_dispatch")
                   if importlib.util.find_spec(m) is not None), "")
    has_trt = bool(module) and importlib.util.find_spec("cuda") is not None
    gpu = None
    if has_trt:
        from .trt_backend import detect_gpu

        try:
            gpu = detect_gpu()
        except GammaError:
            gpu = None  # packages present but no usable GPU: reported as "no GPU" below
    return Machine(has_trt, tuple(ort.get_available_providers()), gpu, module or "tensorrt", _libnvinfer_majors())


def _libnvinfer_majors() -> tuple[int, ...]:
    import ctypes

    found = []
    for major in (10, 11):
        try:
            ctypes.CDLL(f"libnvinfer.so.{major}")
        except OSError:
            continue
        found.append(major)
    return tuple(found)


def choose_backend(requested: str, manifest: Manifest, machine: Machine, precision: str = "fp16",
                   bundle: str | Path = ".", skip: tuple[str, ...] = (), notes: tuple[str, ...] = ()) -> Choice:
    """Pick the backend for ``requested`` ("auto" or a name in BACKENDS); ``skip``: backends that already
    failed to open (``notes`` says why)."""
    where = str(Path(bundle) / MANIFEST_NAME)
    if requested != "auto" and requested not in BACKENDS:
        raise GammaError(f"--backend {requested!r}: choose auto or one of {', '.join(BACKENDS)}")
    notes = list(notes)
    for record in BACKENDS.values():
        if requested not in ("auto", record.name) or record.name in skip:
            continue
        try:
            choice = record.check(machine, manifest, precision, where)
        except EngineMismatch as e:
            if requested == record.name:
                raise
            notes.append(f"{record.name} skipped: {e}")
            continue
        except GammaError as e:
            if requested == record.name:
                raise GammaError(f"--backend {record.name}: {e}") from None
            notes.append(f"{record.name} skipped: {_first_clause(e)}")
            continue
        why = "the best available" if requested == "auto" else "as asked"
        return Choice(record.name, "; ".join([f"{choice.reason}, {why}", *notes]), choice.engines, choice.precision)
    raise GammaError(f"no audio backend can run here (onnxruntime providers: {', '.join(machine.ort_providers)}"
                     f"{'; ' + '; '.join(notes) if notes else ''})")


def ort_providers(backend: str, bundle: str | Path, fp16: bool = True, inputs=()) -> list:
    """The ``providers`` argument of ``onnxruntime.InferenceSession`` for an ORT backend (best first, CPU last),
    for a graph with ``inputs`` (TensorSpecs: ORT's TensorRT provider gets explicit profile shapes)."""
    record = BACKENDS.get(backend)
    if record is None or record.providers is None:
        ort_names = [b.name for b in BACKENDS.values() if b.providers]
        raise GammaError(f"{backend!r} is not an ONNX Runtime backend ({', '.join(ort_names)})")
    return record.providers(Path(bundle), fp16, inputs)


def available_precisions(manifest: Manifest) -> list[str]:
    """Precisions for which the bundle holds every graph of its audio chain."""
    return [p for p in PRECISIONS
            if all(component_key(c, p) in manifest.components for c in manifest.audio.components)]


def pick_precision(requested: str, backend: str, manifest: Manifest, bundle: str | Path = ".") -> str:
    """``auto``: fp16 on a GPU backend when the bundle has it (half the memory traffic), else fp32
    (ONNX Runtime's CPU kernels are slower in fp16 and the fp32 graphs are the exact ones)."""
    have = available_precisions(manifest)
    where = Path(bundle) / MANIFEST_NAME
    if not have:
        raise BundleError(f"{where}: field 'components' has no complete set of audio graphs "
                          f"({', '.join(manifest.audio.components)}); run `gamma-rt export onnx`")
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
    """The audio backend ``name`` ("auto" picks the best available; ``.reason`` says which and why). A backend
    whose ONNX Runtime provider does not really load is an error when asked for by name; ``auto`` goes on
    to the next one and says so."""
    machine = machine or probe()
    skip, notes = [], []
    while True:
        choice = choose_backend(name, manifest, machine, precision, bundle, tuple(skip), tuple(notes))
        record = BACKENDS[choice.backend]
        chosen = choice.precision if record.picks_own_precision else \
            pick_precision(precision, choice.backend, manifest, bundle)
        try:
            return record.open(bundle, manifest, choice, chosen, threads)
        except ProviderNotLoaded as e:
            if name != "auto":
                raise GammaError(f"--backend {name}: {e}") from None
            skip.append(choice.backend)
            notes.append(f"{choice.backend} skipped: {e}")


def _first_clause(error: Exception) -> str:
    """The reason without its advice (what to install, which flag to use): auto's reason lists every skipped
    backend, and the advice is for one asked for by name."""
    clauses = str(error).split("; ")
    return "; ".join(c for c in clauses if not c.startswith(("install ", "use ", "run ", "rebuild ")))


def _default_threads() -> int:
    return available_cores()  # ORT without --threads: every core it may use; it does not spin (ort_backend)
