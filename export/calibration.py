"""Calibration data for int8/fp8 TensorRT engines, and the embedding-cosine report against fp32.

Calibration audio is the bundle's demo music (``BUNDLE/demo/``) plus any folder the user names: decoded,
cut into 30 s windows, turned into log-mel with the runtime's own front end, so the engines see the same
input distribution as at run time. Each component is calibrated on its real inputs: the experts on
log-mel, fusion on the fp32 experts' outputs, the projector on the fp32 fusion output (run through ONNX
Runtime on CPU).

The cosine report is the same code for any candidate (an ORT fp16 graph here, a TensorRT engine on a
GPU): per component the candidate gets the fp32 chain's inputs ("isolated": the component's own error),
and the whole candidate chain is compared with the fp32 chain at the end ("chained").
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from gamma_rt.errors import GammaError
from gamma_rt.manifest import AUDIO_COMPONENTS, Manifest

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".m4a", ".opus", ".aiff", ".aif")
DEMO_DIR = "demo"

Feed = dict[str, np.ndarray]
# A candidate runner: (component name, feed of float32 inputs) -> float32 output.
Runner = Callable[[str, Feed], np.ndarray]


def calibration_files(bundle: str | Path, extra_folder: str | Path | None = None) -> list[Path]:
    """Audio files under BUNDLE/demo/ and ``extra_folder`` (recursively), in a stable order."""
    folders = [Path(bundle) / DEMO_DIR] + ([Path(extra_folder)] if extra_folder else [])
    if extra_folder and not Path(extra_folder).is_dir():
        raise GammaError(f"{extra_folder}: --calibration-audio folder not found")
    files = sorted(p for f in folders if f.is_dir() for p in f.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
    if not files:
        raise GammaError(
            f"no calibration audio: put music in {Path(bundle) / DEMO_DIR} or pass --calibration-audio DIR"
        )
    return files


def files_sha256(files: Iterable[Path]) -> str:
    """One hash over the calibration set, so that new music triggers a new calibration."""
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        h.update(Path(f).read_bytes())
    return h.hexdigest()


def calibration_windows(files: Iterable[Path], max_windows: int = 64) -> Iterator[np.ndarray]:
    """Log-mel windows (128 mel bins, 3000 frames) float32 of every full or partial 30 s window."""
    from gamma_rt.runtime.audio import load_audio
    from gamma_rt.runtime.mel import N_SAMPLES, log_mel_spectrogram, pad_or_trim

    n = 0
    for f in files:
        audio = load_audio(f)
        for start in range(0, max(len(audio), 1), N_SAMPLES):
            if n >= max_windows:
                return
            yield log_mel_spectrogram(pad_or_trim(audio[start:start + N_SAMPLES]))
            n += 1


def calibration_batches(files: Iterable[Path], batch: int = 1, max_windows: int = 64) -> Iterator[np.ndarray]:
    """(batch, 128, 3000) float32 log-mel batches; the last, short batch is dropped (fixed engine batch)."""
    pending: list[np.ndarray] = []
    for w in calibration_windows(files, max_windows):
        pending.append(w)
        if len(pending) == batch:
            yield np.stack(pending)
            pending = []


class OrtChain:
    """The four audio graphs of one precision (manifest keys ``name`` + ``suffix``) as ORT CPU sessions."""

    def __init__(self, bundle: str | Path, manifest: Manifest, suffix: str = "", threads: int = 1):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        self.sessions = {}
        for name in AUDIO_COMPONENTS:
            c = manifest.component(name + suffix)
            self.sessions[name] = ort.InferenceSession(str(Path(bundle) / c.file), opts, providers=["CPUExecutionProvider"])

    def __call__(self, name: str, feed: Feed) -> np.ndarray:
        return self.sessions[name].run(None, feed)[0]


def component_feeds(run: Runner, mel: np.ndarray) -> dict[str, Feed]:
    """Every component's inputs for one batch, from running ``run`` along the chain; also the final output
    under ``"embeddings"``."""
    temporal = run("temporal_encoder", {"mel": mel})
    global_ = run("global_encoder", {"mel": mel})
    fused = run("fusion", {"temporal": temporal, "global": global_})
    return {
        "temporal_encoder": {"mel": mel},
        "global_encoder": {"mel": mel},
        "fusion": {"temporal": temporal, "global": global_},
        "projector": {"fused": fused},
        "embeddings": {"embeddings": run("projector", {"fused": fused})},
    }


def token_cosines(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """Cosine similarity of every token vector (last axis), float64."""
    a, b = reference.astype(np.float64), candidate.astype(np.float64)
    num = (a * b).sum(-1)
    den = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    return num / np.maximum(den, 1e-30)


def cosine_report(reference: Runner, candidate: Runner, mel_batches: Iterable[np.ndarray]) -> dict:
    """Per component: mean and min token cosine of ``candidate`` vs ``reference`` on the reference's
    inputs ("isolated"), and of the whole candidate chain's embeddings ("chained")."""
    cos: dict[str, list[np.ndarray]] = {name: [] for name in (*AUDIO_COMPONENTS, "chained")}
    for mel in mel_batches:
        feeds = component_feeds(reference, mel)
        outputs = {
            "temporal_encoder": feeds["fusion"]["temporal"], "global_encoder": feeds["fusion"]["global"],
            "fusion": feeds["projector"]["fused"], "projector": feeds["embeddings"]["embeddings"],
        }
        for name in AUDIO_COMPONENTS:
            cos[name].append(token_cosines(outputs[name], candidate(name, feeds[name])).ravel())
        chained = component_feeds(candidate, mel)["embeddings"]["embeddings"]
        cos["chained"].append(token_cosines(outputs["projector"], chained).ravel())
    if not cos["chained"]:
        raise GammaError("cosine report: no calibration windows")
    return {k: {"mean": float(np.concatenate(v).mean()), "min": float(np.concatenate(v).min())} for k, v in cos.items()}


def format_report(report: dict, label: str) -> str:
    lines = [f"embedding cosine vs fp32 ({label}):"]
    lines += [f"  {name:17s} mean {r['mean']:.6f}  min {r['min']:.6f}" for name, r in report.items()]
    return "\n".join(lines)


def make_calibrator(trt, build, feeds: list[Feed], cache_path: Path):
    """A TensorRT entropy calibrator that feeds ``feeds`` (this component's inputs, one dict per batch)
    through device buffers allocated with cuda-python. The calibration table is cached at ``cache_path``."""
    from cuda.bindings import runtime as cudart

    def check(result):
        err, *rest = result if isinstance(result, tuple) else (result,)
        if int(err) != 0:
            raise RuntimeError(f"CUDA error {err}")
        return rest[0] if rest else None

    class Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            super().__init__()
            self.batches = iter(feeds)
            self.batch = next(iter(feeds[0].values())).shape[0]
            self.buffers = {k: check(cudart.cudaMalloc(v.nbytes)) for k, v in feeds[0].items()}

        def get_batch_size(self):
            return self.batch

        def get_batch(self, names):
            feed = next(self.batches, None)
            if feed is None:
                for ptr in self.buffers.values():
                    check(cudart.cudaFree(ptr))
                self.buffers = {}
                return None
            for k, v in feed.items():
                v = np.ascontiguousarray(v, dtype=np.float32)
                check(cudart.cudaMemcpy(self.buffers[k], v.ctypes.data, v.nbytes, cudart.cudaMemcpyKind.cudaMemcpyHostToDevice))
            return [int(self.buffers[n]) for n in names]

        def read_calibration_cache(self):
            return cache_path.read_bytes() if cache_path.is_file() else None

        def write_calibration_cache(self, cache):
            cache_path.write_bytes(bytes(cache))

    return Calibrator()
