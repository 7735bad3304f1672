"""Calibration for int8 TensorRT engines: the audio it calibrates on, and the calibrator the builder calls.

Calibration audio is the bundle's demo music (``BUNDLE/demo/``) plus any folder the user names: decoded,
cut into 30 s windows, turned into log-mel with the runtime's own front end, so the engines see the same
input distribution as at run time. Each step of the manifest's audio chain is calibrated on its real
inputs: the first steps on log-mel (and a full-window mask), later ones on the fp32 outputs of the steps
before them (``cosine_report.component_feeds`` through ONNX Runtime on CPU).

The calibration set is named by :func:`calibration_sha256`, the hash of the log-mel batches themselves (the
music, the window count, the batch size and the front end all change it); the engine plan puts that hash
in the calibration table's file name, so new music never reuses a stale table. The INT8 calibrator exists
on TensorRT 10 only (deprecated since 10.1, removed in 11, which builds int8 from explicit Q/DQ graphs).
It sits in export/ beside the engine builder (export/engines.py), its only user.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from gamma_rt.errors import GammaError

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".m4a", ".opus", ".aiff", ".aif")
DEMO_DIR = "demo"

Feed = dict[str, np.ndarray]


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


def calibration_windows(files: Iterable[Path], max_windows: int = 64, audio=None) -> Iterator[np.ndarray]:
    """(n_mels, frames) float32 front-end windows of every full or partial window, made as the runtime makes
    them for the manifest's ``audio`` section (an AudioSection; None: Whisper's 128-bin log-mel of 30 s)."""
    from gamma_rt.manifest import AudioSection
    from gamma_rt.runtime.audio import load_audio
    from gamma_rt.runtime.embed import AudioLayout, window_feeds
    from gamma_rt.runtime.windows import windows

    layout = AudioLayout.from_manifest(audio if audio is not None else AudioSection())
    n = 0
    for f in files:
        for window in windows([load_audio(f, layout.sample_rate)], layout.sample_rate, layout.window_seconds):
            if n >= max_windows:
                return
            yield window_feeds(window, layout)["mel"][0]
            n += 1


def calibration_batches(files: Iterable[Path], batch: int = 1, max_windows: int = 64,
                        audio=None) -> Iterator[np.ndarray]:
    """(batch, n_mels, frames) float32 batches of :func:`calibration_windows`; the last, short batch is
    dropped (fixed engine batch)."""
    pending: list[np.ndarray] = []
    for w in calibration_windows(files, max_windows, audio):
        pending.append(w)
        if len(pending) == batch:
            yield np.stack(pending)
            pending = []


def calibration_sha256(mel_batches: Iterable[np.ndarray]) -> str:
    """Hash of the calibration data: every batch's shape, dtype and bytes, in order."""
    h = hashlib.sha256()
    for mel in mel_batches:
        mel = np.ascontiguousarray(mel)
        h.update(f"{mel.shape}{mel.dtype}".encode())
        h.update(mel.tobytes())
    return h.hexdigest()


def make_calibrator(trt, build, feeds: list[Feed], cache_path: Path, cudart=None):
    """A TensorRT 10 entropy calibrator that feeds ``feeds`` (this component's inputs, one dict per batch, each
    array in its graph input's own dtype) through device buffers allocated with cuda-python. The calibration
    table is cached at ``cache_path`` (named by the data's hash, see the module docstring). ``cudart``: the
    CUDA runtime module (cuda-python's, imported here unless given)."""
    base = getattr(trt, "IInt8EntropyCalibrator2", None)
    if base is None:
        raise GammaError(f"TensorRT {trt.__version__} has no INT8 calibrators; build int8 from a Q/DQ graph")
    if cudart is None:
        from gamma_rt.runtime.trt_backend import cuda_runtime

        cudart = cuda_runtime()

    def check(result):
        err, *rest = result if isinstance(result, tuple) else (result,)
        if int(err) != 0:
            raise RuntimeError(f"CUDA error {err}")
        return rest[0] if rest else None

    class Calibrator(base):
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
                self.free()
                return None
            for k, v in feed.items():
                v = np.ascontiguousarray(v)
                check(cudart.cudaMemcpy(self.buffers[k], v.ctypes.data, v.nbytes, cudart.cudaMemcpyKind.cudaMemcpyHostToDevice))
            return [int(self.buffers[n]) for n in names]

        def free(self):
            for ptr in self.buffers.values():
                check(cudart.cudaFree(ptr))
            self.buffers = {}

        def read_calibration_cache(self):
            return cache_path.read_bytes() if cache_path.is_file() else None

        def write_calibration_cache(self, cache):
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            cache_path.write_bytes(bytes(cache))

    return Calibrator()
