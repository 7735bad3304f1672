"""What a LoRA adapter applied at run time costs against the same adapter merged at export (issue 25).

An OpenMU bundle holds ``decoder`` (the adapter merged), ``decoder.base`` and ``lora``. This opens two
decoder sessions on the CPU: the merged decoder, and the base with llama.cpp applying the adapter (scale 1).
Both prefill the same prompt, then decode ``--tokens`` greedy tokens; the two take turns, ``--repeats``
rounds after one warm-up each, so a change in the machine's load falls on both. The figure: the median
decode tok/s of base + adapter over that of the merged decoder, and whether both decoded the same tokens.
Written to bench/results/lora-cost-<preset>-<time>.json.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from .entry import run_module, write_json
from .timing import summarize

RESULT_FORMAT = "gamma-rt-lora-cost/1"
DEFAULT_OUT = Path("bench") / "results"
PROMPT = "A chat between a curious user and an artificial intelligence assistant. USER: Describe the song. ASSISTANT:"

EXAMPLE = """\
example:
  python -m gamma_rt.bench.lora_cost                         # builds gamma-rt init --family openmu --preset small
  python -m gamma_rt.bench.lora_cost --bundle om --tokens 128 --repeats 7
"""


def build(work: Path, preset: str) -> Path:
    """An OpenMU bundle of ``preset`` (init, then export gguf f32) in ``work``, reused if already there."""
    from gamma_rt.export.families import family_named
    from gamma_rt.export.gguf_export import export_gguf

    folder, bundle = work / f"openmu-{preset}", work / f"openmu-{preset}-bundle"
    if not (bundle / "manifest.json").is_file():
        if not (folder / "config.json").is_file():
            family_named("openmu").init(preset, folder, seed=0)
        export_gguf(folder, bundle, "f32", progress=lambda items, **_: items)
    return bundle


def decode(session, prompt: list[int], n: int) -> tuple[float, list[int]]:
    """(decode seconds for ``n`` greedy tokens after prefilling ``prompt``, the tokens)."""
    import numpy as np

    session.clear()
    session.eval_tokens(prompt)
    tokens = []
    start = time.perf_counter()
    for _ in range(n):
        token = int(np.argmax(session.logits()))
        tokens.append(token)
        session.eval_tokens([token])
    return time.perf_counter() - start, tokens


def run(bundle: Path, tokens: int, repeats: int, threads: int) -> dict:
    from gamma_rt.manifest import Manifest
    from gamma_rt.runtime.decoder import DecoderSession

    manifest = Manifest.load(bundle)
    lora = manifest.component("lora")
    n_ctx = 64 + tokens + 256
    sessions = {
        "merged": DecoderSession(manifest.path(bundle, "decoder"), n_ctx=n_ctx, n_threads=threads, n_seq_max=1),
        "base+lora": DecoderSession(manifest.path(bundle, lora.extra["base"]), n_ctx=n_ctx, n_threads=threads,
                                    n_seq_max=1, lora=manifest.path(bundle, "lora")),
    }
    try:
        prompt = sessions["merged"].tokenize(PROMPT)
        answers = {name: decode(s, prompt, tokens)[1] for name, s in sessions.items()}  # warm-up
        rates: dict[str, list[float]] = {name: [] for name in sessions}
        for _ in range(repeats):
            for name, session in sessions.items():
                seconds, _ = decode(session, prompt, tokens)
                rates[name].append(tokens / seconds)
    finally:
        for s in sessions.values():
            s.close()
    stats = {name: summarize(r).to_dict() for name, r in rates.items()}
    ratio = stats["base+lora"]["median"] / stats["merged"]["median"]
    return {"decode_tok_s": stats, "ratio_lora_over_merged": ratio, "same_tokens": answers["merged"] == answers["base+lora"],
            "prompt_tokens": len(prompt), "decode_tokens": tokens, "repeats": repeats,
            "adapter": {"rank": lora.extra.get("rank"), "alpha": lora.extra.get("alpha"),
                        "targets": lora.extra.get("targets"), "bytes": lora.bytes},
            "llm": manifest.llm.to_dict()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gamma_rt.bench.lora_cost", description=__doc__, epilog=EXAMPLE,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, default=None, help="an OpenMU bundle (default: build --preset in --work)")
    p.add_argument("--preset", default="small", choices=("tiny", "small"), help="what to build (default small)")
    p.add_argument("--work", type=Path, default=Path("bench-work"), help="where to build (default bench-work)")
    p.add_argument("--tokens", type=int, default=64, help="tokens decoded per run (default 64)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs of each (default 5)")
    p.add_argument("--threads", type=int, default=1, help="decoder threads (default 1: on a loaded 2-core machine two "
                   "threads stall at every barrier)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="result folder (default bench/results)")
    args = p.parse_args(argv)

    def job(command: str) -> None:
        from gamma_rt.machine import describe

        bundle = args.bundle or build(args.work, args.preset)
        result = {"format": RESULT_FORMAT, "command": command, "bundle": bundle.name,
                  "preset": None if args.bundle else args.preset, "machine": describe(args.threads),
                  **run(bundle, args.tokens, args.repeats, args.threads)}
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        path = write_json(args.out / f"lora-cost-{result['preset'] or bundle.name}-{stamp}.json", result)
        rates = result["decode_tok_s"]
        print(f"merged {rates['merged']['median']:.1f} tok/s, base+lora {rates['base+lora']['median']:.1f} tok/s: "
              f"x{result['ratio_lora_over_merged']:.3f}, same tokens: {result['same_tokens']} -> {path}")

    return run_module("lora_cost", argv, job)


if __name__ == "__main__":
    raise SystemExit(main())
