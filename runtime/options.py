"""How the runtime runs a bundle, as one frozen object: from the CLI into ``Pipeline.open``, the tagger,
the Ray actors and the bench.

    opts = RuntimeOptions(threads=1, gpu_layers=0)
    with Pipeline.open("bundle", opts) as pipe: ...

A new option touches three places: a field here, its flag in :func:`add_runtime_options`, and the one
place that uses it.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path

from gamma_rt.errors import GammaError

BACKEND_NAMES = ("auto", "tensorrt", "ort-trt", "ort-cuda", "ort-cpu")
# fp32/fp16: ONNX graphs; bf16/int8/fp8: TensorRT engines of that precision (--backend tensorrt)
PRECISION_NAMES = ("auto", "fp32", "fp16", "bf16", "int8", "fp8")
KV_CACHE_NAMES = ("auto", "f32", "f16")
THREADS_HELP = ("CPU threads for the decoder and ONNX Runtime. Default: the decoder (llama.cpp) takes half the "
                "cores this process may use (its CPU affinity, cut to its cgroup's CPU quota), at least 1 and at "
                "most 8, and the audio encoders (ONNX Runtime) all of them, with spin-waiting off so that each "
                "engine leaves the cores to the other when it waits: 1 decoder thread and 2 encoder threads on 2 "
                "cores, 8 and 16 on 16 cores. That holds up beside other busy processes; llama.cpp's threads "
                "wait for each other after every step, so more decoder threads than free cores is the slowest "
                "choice (python -m gamma_rt.bench.thread_defaults measures it)")


@dataclass(frozen=True)
class RuntimeOptions:
    # audio side: "auto" picks the best available backend and says why (runtime/backends.py)
    backend: str = "auto"
    # audio graphs to run: "auto" is the best TensorRT engines recorded for this GPU, else fp16 on a GPU
    # backend when the bundle has them, else fp32
    precision: str = "auto"
    # CPU threads for the decoder and ONNX Runtime; None = the decoder takes half the available cores (at
    # most 8: gamma_rt.machine.default_decoder_threads) and ONNX Runtime all of them, without spin-waiting
    threads: int | None = None
    # decoder layers on the GPU; None = all where llama.cpp was built with CUDA, 0 = CPU only
    gpu_layers: int | None = None
    # keep audio embeddings here, keyed by audio content and bundle, so a song is encoded once
    cache_dir: Path | None = None
    # encode window k+1 on a worker thread while window k is prefilled (not where the encoders and the
    # decoder would share too few CPU cores: cores.py)
    overlap: bool = True
    # the manifest's GGUF component: "decoder" (F32), "decoder.f16", "decoder.q4_k_m", ...; "auto" takes the
    # most faithful one the bundle has (F32, then F16, BF16, Q8_0, ... down to the smallest k-quant)
    decoder: str = "auto"
    # a LoRA adapter component of the manifest ("lora") that llama.cpp applies at run time; its base decoder
    # is then the default, and a decoder it was not made for is refused
    lora: str | None = None
    # encode every window of a song past the model's own limit (manifest audio.max_seconds: OpenMU's 30.72 s),
    # as if it took any length; the model was not trained so, and the runtime says it once
    every_window: bool = False
    # windows per audio-backend call: 1 streams each window as soon as it has arrived; 4 or 8 fill a GPU
    # better on whole files (the first window then waits for its batch)
    batch_windows: int = 1
    # the decoder's KV cache: "auto" is f32 for an all-F32 GGUF (exact: flash attention off) and f16 otherwise;
    # "f16" on an F32 GGUF turns llama.cpp's flash attention on (faster at long contexts, not bit-exact)
    kv_cache: str = "auto"

    def __post_init__(self):
        if self.threads is not None and self.threads < 1:
            raise GammaError(f"--threads must be at least 1, got {self.threads}")
        if self.batch_windows < 1:
            raise GammaError(f"--batch-windows must be at least 1, got {self.batch_windows}")
        if self.gpu_layers is not None and self.gpu_layers < 0:
            raise GammaError(f"--gpu-layers must be 0 or more, got {self.gpu_layers}")
        if self.precision not in PRECISION_NAMES:
            raise GammaError(f"--precision {self.precision!r}: choose {', '.join(PRECISION_NAMES)}")
        if self.kv_cache not in KV_CACHE_NAMES:
            raise GammaError(f"--kv-cache {self.kv_cache!r}: choose {', '.join(KV_CACHE_NAMES)}")
        if self.backend not in BACKEND_NAMES:
            raise GammaError(f"--backend {self.backend!r}: choose {', '.join(BACKEND_NAMES)}")
        if self.cache_dir is not None and not isinstance(self.cache_dir, Path):
            object.__setattr__(self, "cache_dir", Path(self.cache_dir))

    def replace(self, **changes) -> "RuntimeOptions":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """Plain values (for a Ray actor, a JSON record)."""
        d = dataclasses.asdict(self)
        d["cache_dir"] = str(self.cache_dir) if self.cache_dir is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "RuntimeOptions":
        return cls(**d)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "RuntimeOptions":
        """The options of a command that took :func:`add_runtime_options`."""
        return cls(backend=args.backend, precision=args.precision, threads=args.threads,
                   gpu_layers=args.gpu_layers, cache_dir=args.cache_dir, overlap=not args.no_overlap,
                   decoder=args.decoder, batch_windows=args.batch_windows, lora=getattr(args, "lora", None),
                   every_window=getattr(args, "every_window", False), kv_cache=getattr(args, "kv_cache", "auto"))

    @property
    def kv_type(self) -> str | None:
        """The decoder session's ``kv_type``: None lets it choose by the GGUF's type."""
        return None if self.kv_cache == "auto" else self.kv_cache


def add_runtime_options(p: argparse.ArgumentParser, cache_help: str | None = None) -> None:
    """The one flag group of every command that runs a bundle (ask, chat, tag, bench, serve)."""
    g = p.add_argument_group("runtime options")
    g.add_argument("--backend", default="auto", choices=BACKEND_NAMES,
                   help="audio-side backend (default auto: the best available, and -v says which)")
    g.add_argument("--precision", default="auto", choices=PRECISION_NAMES,
                   help="audio graphs to run (default auto: the best TensorRT engines built for this GPU, else fp16 "
                   "on a GPU when the bundle has them, else fp32; bf16/int8/fp8 are TensorRT engines)")
    g.add_argument("--decoder", default="auto", metavar="COMPONENT",
                   help="GGUF component of the manifest: decoder (F32), decoder.f16, decoder.q4_k_m, ... (default "
                   "auto: the most faithful one the bundle has; -v says which)")
    g.add_argument("--lora", default=None, metavar="COMPONENT",
                   help="LoRA adapter of the manifest (e.g. lora) for llama.cpp to apply at run time on its base "
                   "decoder (decoder.base, the default with --lora); without it an OpenMU bundle runs 'decoder', "
                   "the adapter merged at export")
    g.add_argument("--every-window", action="store_true",
                   help="read a song past the model's own limit (manifest audio.max_seconds, e.g. OpenMU's 30.72 s), "
                   "window after window; departs from how the model was trained")
    g.add_argument("--threads", type=int, default=None, metavar="N",
                   help=THREADS_HELP)
    g.add_argument("--gpu-layers", type=int, default=None, metavar="N",
                   help="decoder layers on the GPU (default: all of them when llama.cpp was built with CUDA, "
                   "see native/build.sh; 0 keeps the decoder on the CPU)")
    g.add_argument("--cache-dir", type=Path, default=None, metavar="DIR",
                   help=cache_help or "keep audio embeddings here, so asking about the same song again skips "
                   "the encoders")
    g.add_argument("--batch-windows", type=int, default=1, metavar="N",
                   help="30 s windows per audio-backend call (default 1: each as soon as it arrives; 4 or 8 "
                   "keep a GPU busier: on whole files, and in tag --in-flight and serve, windows of that many "
                   "songs in flight at once)")
    g.add_argument("--kv-cache", default="auto", choices=KV_CACHE_NAMES,
                   help="the decoder's KV cache type (default auto: f32 for an F32 decoder, exact to the reference, "
                   "else f16); f16 on an F32 decoder halves the cache and turns on llama.cpp's flash attention, "
                   "faster on long songs, as llama-server runs it, but not bit-exact")
    g.add_argument("--no-overlap", action="store_true",
                   help="encode each window only after the previous one is prefilled (no worker thread); "
                        "always so where the encoders and the decoder would share too few CPU cores")
