"""How far a candidate audio chain's embeddings are from the fp32 ONNX chain's: token cosine per component.

The report is the same code for any candidate (an ORT fp16 graph, a TensorRT engine on a GPU): per
component the candidate gets the fp32 chain's inputs ("isolated": the component's own error), and the
whole candidate chain is compared with the fp32 chain at the end ("chained").
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from gamma_rt.components import component_key
from gamma_rt.errors import GammaError
from gamma_rt.manifest import AUDIO_COMPONENTS, Manifest

Feed = dict[str, np.ndarray]
# A candidate runner: (component name, feed of float32 inputs) -> float32 output.
Runner = Callable[[str, Feed], np.ndarray]


class OrtChain:
    """The four audio graphs of one precision (manifest keys ``component_key(name, precision)``) as ORT CPU sessions."""

    def __init__(self, bundle: str | Path, manifest: Manifest, precision: str = "fp32", threads: int = 1):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        self.sessions = {}
        for name in AUDIO_COMPONENTS:
            c = manifest.component(component_key(name, precision))
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
