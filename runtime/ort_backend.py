"""The audio side in ONNX Runtime: the manifest's chain of graphs, run one after the other per batch of windows.

The chain (``manifest.audio.chain``) names which value feeds which graph input, so the same executor runs
GaMMA's four graphs (two experts, fusion, projector) and AF-Whisper's two (encoder, projector with rotary
time embeddings) without knowing either family. ``providers`` is ONNX Runtime's list (best first), so the
CUDA and TensorRT execution providers plug in without changing anything else. ORT releases the GIL while
it runs, so the pipeline prefills the decoder on the main thread while this encodes the next window.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gamma_rt.components import component_key
from gamma_rt.errors import BundleError, GammaError
from gamma_rt.manifest import EMBEDDINGS, Manifest

from .timings import StageTimes

# numpy dtype of each graph tensor type the manifest may record
DTYPES = {"float32": np.float32, "float16": np.float16, "int64": np.int64, "int32": np.int32, "bool": np.bool_}


class OrtBackend:
    """The bundle's audio graphs of one precision in ONNX Runtime sessions."""

    def __init__(self, bundle: str | Path, manifest: Manifest, precision: str = "fp32", providers: list | None = None,
                 threads: int | None = None, name: str = "ort-cpu", reason: str = ""):
        import onnxruntime as ort

        self.bundle, self.name, self.precision, self.reason = Path(bundle), name, precision, reason
        self.chain = manifest.audio.chain
        self.times = StageTimes()
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.sessions, self.specs = {}, {}
        for step in self.chain:
            key = component_key(step.component, precision)
            path = manifest.path(bundle, key)
            self.specs[step.component] = manifest.component(key)
            try:
                self.sessions[step.component] = ort.InferenceSession(
                    str(path), options, providers=providers or ["CPUExecutionProvider"])
            except Exception as e:  # ORT raises its own Fail/InvalidGraph types for a file it cannot load
                raise BundleError(f"{path}: ONNX Runtime cannot load components.{key} "
                                  f"({str(e).splitlines()[0][:200]})") from None
        first = self.specs[self.chain[0].component]
        mel_input = next((g for g, v in self.chain[0].inputs.items() if v == "mel"), None)
        spec = next((s for s in first.inputs if s.name == mel_input), None)
        self.mel_shape = tuple(spec.shape[1:]) if spec else None

    def _run(self, stage: str, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        with self.times.stage(stage):
            return self.sessions[stage].run(None, feed)

    def encode(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """``feeds``: ``mel`` (B, n_mels, frames) float32 log-mel, ``mel_mask`` (B, frames) int64 and
        ``window_index`` (B,) int64 -> (B, tokens_per_window, n_embd) float32 embeddings."""
        values = dict(feeds)
        mel = values["mel"] = np.ascontiguousarray(values["mel"], dtype=np.float32)
        if self.mel_shape and (mel.ndim != 3 or tuple(mel.shape[1:]) != self.mel_shape):
            raise GammaError(f"mel of shape {mel.shape}: the bundle's encoders take (batch, {self.mel_shape[0]}, "
                             f"{self.mel_shape[1]})")
        for step in self.chain:
            spec = self.specs[step.component]
            types = {s.name: DTYPES.get(s.dtype, np.float32) for s in spec.inputs}
            feed = {g: np.ascontiguousarray(values[v], dtype=types.get(g, np.float32)) for g, v in step.inputs.items()}
            results = self._run(step.component, feed)
            names = [o.name for o in self.sessions[step.component].get_outputs()]
            for graph_output, value in step.outputs.items():
                values[value] = results[names.index(graph_output)]
        return values[EMBEDDINGS]

    def close(self) -> None:
        self.sessions = {}
