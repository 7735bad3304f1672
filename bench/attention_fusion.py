"""Audio side per 30 s window: ORT with unfused attention, ORT with fused attention, PyTorch eager.

Two bundles exported from one checkpoint (before and after the MultiHeadAttention fusion) and the
checkpoint's eager modules run the same mel window (1, n_mels, frames) float32 along the manifest's audio
chain, same thread count, interleaved round by round so machine load hits all three alike. Prints medians,
ms per window per component.

    python -m bench.attention_fusion CKPT BUNDLE_UNFUSED BUNDLE_FUSED [--rounds 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np


def _timed_walk(chain, mel: np.ndarray, run):
    """(embeddings, {component: ms}) of ``run(component, {graph input: array}) -> array`` along ``chain``."""
    from gamma_rt.export.cosine_report import chain_inputs

    values, ms = dict(chain_inputs(chain, mel)), {}
    for step in chain:
        t0 = time.perf_counter()
        out = run(step.component, {k: values[v] for k, v in step.inputs.items()})
        ms[step.component] = (time.perf_counter() - t0) * 1e3
        values[next(iter(step.outputs.values()))] = out
    return out, ms


def ort_chain(bundle: Path, threads: int):
    """A function mel -> (embeddings, {component: ms}) over the bundle's fp32 graphs, along its chain."""
    import onnxruntime as ort

    from gamma_rt.manifest import Manifest

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    manifest = Manifest.read(bundle)
    s = {n: ort.InferenceSession(str(bundle / manifest.component(n).file), opts) for n in manifest.audio.components}
    return lambda mel: _timed_walk(manifest.audio.chain, mel, lambda name, feed: s[name].run(None, feed)[0])


def eager_chain(ckpt_dir: Path):
    """The same over the checkpoint family's PyTorch graph modules (what export onnx traces)."""
    import torch

    from gamma_rt.audio_chain import read_chain
    from gamma_rt.export.families import detect

    family = detect(ckpt_dir)
    graphs = {g.name: g for g in family.graphs()}
    modules = {name: g.build().eval() for name, g in graphs.items()}
    chain = read_chain(family.manifest_sections()["audio"]["chain"], str(ckpt_dir))

    def run(name, feed):
        with torch.no_grad():
            return modules[name](*(torch.from_numpy(feed[spec.name]) for spec in graphs[name].inputs)).numpy()

    return lambda mel: _timed_walk(chain, mel, run)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path)
    p.add_argument("unfused", type=Path, help="bundle exported without the attention fusion")
    p.add_argument("fused", type=Path, help="bundle exported with it")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()

    import torch

    torch.set_num_threads(a.threads)
    from gamma_rt.manifest import Manifest

    audio = Manifest.read(a.unfused).audio
    mel = np.random.default_rng(0).standard_normal((1, audio.n_mels, audio.window_frames)).astype(np.float32)
    engines = {"ort_unfused": ort_chain(a.unfused, a.threads), "ort_fused": ort_chain(a.fused, a.threads),
               "eager": eager_chain(a.checkpoint)}
    outs = {k: f(mel)[0] for k, f in engines.items()}  # warm-up; also the parity check below
    times: dict[str, list[dict]] = {k: [] for k in engines}
    for _ in range(a.rounds):
        for k, f in engines.items():
            times[k].append(f(mel)[1])
    ref = outs["eager"]
    result = {"threads": a.threads, "rounds": a.rounds, "ms_per_window": {}, "rel_err_vs_eager": {}}
    for k, runs in times.items():
        med = {stage: statistics.median(r[stage] for r in runs) for stage in runs[0]}
        med["total"] = statistics.median(sum(r.values()) for r in runs)
        result["ms_per_window"][k] = {s: round(v, 1) for s, v in med.items()}
        result["rel_err_vs_eager"][k] = float(np.linalg.norm(outs[k] - ref) / np.linalg.norm(ref))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
