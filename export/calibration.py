"""Calibration for int8 TensorRT engines: the audio it calibrates on, and the calibrator the builder calls.

Calibration audio is the bundle's demo music (``BUNDLE/demo/``) plus any folder the user names: decoded,
cut into 30 s windows, turned into log-mel with the runtime's own front end, so the engines see the same
input distribution as at run time. Each component is calibrated on its real inputs: the experts on
log-mel, fusion on the fp32 experts' outputs, the projector on the fp32 fusion output
(``cosine_report.component_feeds`` through ONNX Runtime on CPU).

The calibration set is named by ``gamma_rt.hashing.sha256_files`` over its files, so new music triggers a
new calibration. It sits in export/ beside the engine builder (export/engines.py), its only user.
"""

from __future__ import annotations

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
