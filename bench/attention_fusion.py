"""Audio side per 30 s window: ORT with unfused attention, ORT with fused attention, PyTorch eager.

Two bundles exported from one checkpoint (before and after the MultiHeadAttention fusion) and the
checkpoint's eager modules run the same mel window (1, n_mels, 3000) float32, same thread count,
interleaved round by round so machine load hits all three alike. Prints medians, ms per window.

    python -m bench.attention_fusion CKPT BUNDLE_UNFUSED BUNDLE_FUSED [--rounds 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np


def ort_chain(bundle: Path, threads: int):
    """A function mel -> (embeddings, {stage: ms}) over the bundle's fp32 graphs."""
    import onnxruntime as ort

    from gamma_rt.manifest import AUDIO_COMPONENTS, Manifest

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    manifest = Manifest.read(bundle)
    s = {n: ort.InferenceSession(str(bundle / manifest.component(n).file), opts) for n in AUDIO_COMPONENTS}

    def run(mel):
        ms, t0 = {}, time.perf_counter()
        temporal = s["temporal_encoder"].run(None, {"mel": mel})[0]
        t1 = time.perf_counter()
        global_ = s["global_encoder"].run(None, {"mel": mel})[0]
        t2 = time.perf_counter()
        fused = s["fusion"].run(None, {"temporal": temporal, "global": global_})[0]
        t3 = time.perf_counter()
        out = s["projector"].run(None, {"fused": fused})[0]
        t4 = time.perf_counter()
        ms = {"experts": (t2 - t0) * 1e3, "fusion": (t3 - t2) * 1e3, "projector": (t4 - t3) * 1e3}
        return out, ms

    return run


def eager_chain(ckpt_dir: Path):
    import torch

    from gamma_rt.export.families.gamma.checkpoint import Checkpoint

    model = Checkpoint(ckpt_dir).model().eval()
    m = model.audio_side_modules()

    def run(mel):
        with torch.no_grad():
            x = torch.from_numpy(mel)
            t0 = time.perf_counter()
            temporal = m["temporal_encoder"](x).last_hidden_state
            global_ = m["global_encoder"](x).last_hidden_state
            t2 = time.perf_counter()
            fused = m["fusion"](temporal, global_)
            t3 = time.perf_counter()
            out = m["projector"](fused)
            t4 = time.perf_counter()
        return out.numpy(), {"experts": (t2 - t0) * 1e3, "fusion": (t3 - t2) * 1e3, "projector": (t4 - t3) * 1e3}

    return run


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
    from gamma_rt.export.families.gamma.checkpoint import Checkpoint

    cfg = Checkpoint(a.checkpoint).config
    mel = np.random.default_rng(0).standard_normal((1, cfg.temporal.num_mel_bins, 3000)).astype(np.float32)
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
