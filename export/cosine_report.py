"""How far a candidate audio chain's embeddings are from the fp32 ONNX chain's: token cosine per component.

The report is the same code for any candidate (an ORT fp16 graph, a TensorRT engine on a GPU): per
component the candidate gets the fp32 chain's inputs ("isolated": the component's own error), and the
whole candidate chain is compared with the fp32 chain at the end ("chained").
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from gamma_rt.audio_chain import EMBEDDINGS, embeddings_at, fed_values
from gamma_rt.components import component_key
from gamma_rt.errors import GammaError
from gamma_rt.manifest import Manifest

Feed = dict[str, np.ndarray]
# A candidate runner: (component name, feed of float32 inputs) -> float32 output.
Runner = Callable[[str, Feed], np.ndarray]


class OrtChain:
    """The audio graphs of one precision (manifest keys ``component_key(name, precision)``) as ORT CPU
    sessions, one per step of the manifest's audio chain."""

    def __init__(self, bundle: str | Path, manifest: Manifest, precision: str = "fp32", threads: int = 1):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        self.chain = manifest.audio.chain
        self.sessions = {}
        for name in manifest.audio.components:
            c = manifest.component(component_key(name, precision))
            self.sessions[name] = ort.InferenceSession(str(Path(bundle) / c.file), opts, providers=["CPUExecutionProvider"])

    def __call__(self, name: str, feed: Feed) -> np.ndarray:
        return self.sessions[name].run(None, feed)[0]


def chain_inputs(chain, mel: np.ndarray) -> Feed:
    """The chain inputs for a batch of full windows: ``mel``, ``mel_mask`` (every frame real) and
    ``window_index`` (0, 1, ...), those the chain reads."""
    batch, _, frames = mel.shape
    values = {"mel": mel, "mel_mask": np.ones((batch, frames), np.int64), "window_index": np.arange(batch, dtype=np.int64)}
    return {v: values[v] for v in fed_values(chain)}


def _walk(run: Runner, chain, mel: np.ndarray) -> tuple[dict[str, Feed], dict[str, np.ndarray]]:
    """(each component's inputs, each component's output) from running ``run`` along ``chain``."""
    values = dict(chain_inputs(chain, mel))
    feeds, outputs = {}, {}
    for step in chain:
        feeds[step.component] = {graph_input: values[value] for graph_input, value in step.inputs.items()}
        value = next(iter(step.outputs.values()))  # a runner returns the graph's first output
        values[value] = outputs[step.component] = run(step.component, feeds[step.component])
    return feeds, outputs


def component_feeds(run: Runner, mel: np.ndarray, chain=None) -> dict[str, Feed]:
    """Every component's inputs for one batch, from running ``run`` along the chain (``run.chain`` unless
    given); also the final output under ``"embeddings"``."""
    chain = chain if chain is not None else run.chain
    feeds, outputs = _walk(run, chain, mel)
    return {**feeds, EMBEDDINGS: {EMBEDDINGS: outputs[embeddings_at(chain)[0]]}}


def token_cosines(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """Cosine similarity of every token vector (last axis), float64."""
    a, b = reference.astype(np.float64), candidate.astype(np.float64)
    num = (a * b).sum(-1)
    den = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    return num / np.maximum(den, 1e-30)


def cosine_report(reference: OrtChain, candidate: Runner, mel_batches: Iterable[np.ndarray]) -> dict:
    """Per component of the reference's chain: mean and min token cosine of ``candidate`` vs ``reference``
    on the reference's inputs ("isolated"), and of the whole candidate chain's embeddings ("chained")."""
    chain = reference.chain
    last = embeddings_at(chain)[0]
    cos: dict[str, list[np.ndarray]] = {name: [] for name in (*(s.component for s in chain), "chained")}
    for mel in mel_batches:
        feeds, outputs = _walk(reference, chain, mel)
        for name in feeds:
            cos[name].append(token_cosines(outputs[name], candidate(name, feeds[name])).ravel())
        _, chained = _walk(candidate, chain, mel)
        cos["chained"].append(token_cosines(outputs[last], chained[last]).ravel())
    if not cos["chained"]:
        raise GammaError("cosine report: no calibration windows")
    return {k: {"mean": float(np.concatenate(v).mean()), "min": float(np.concatenate(v).min())} for k, v in cos.items()}


def format_report(report: dict, label: str) -> str:
    lines = [f"embedding cosine vs fp32 ({label}):"]
    lines += [f"  {name:17s} mean {r['mean']:.6f}  min {r['min']:.6f}" for name, r in report.items()]
    return "\n".join(lines)
