"""Time and peak memory of writing and exporting the `full` preset, each step a `gamma-rt` run under `/usr/bin/time -v`.

    python -m gamma_rt.bench.full_export --work /tmp --out bench/results/full_export_cpu.json
    python -m gamma_rt.bench.full_export --family musicflamingo --work /tmp/gamma-full --precision fp32 \
        --precision fp16 --gguf f16 --ask 30 --out bench/results/full_export_musicflamingo_cpu.json
    python -m gamma_rt.bench.full_export --family openmu --work /tmp/omfull --gguf f16 \
        --out bench/results/full_export_openmu_cpu.json

Steps: ``gamma-rt init --family F --preset full`` (random weights, bf16), then ``gamma-rt export onnx`` at each
asked precision and ``gamma-rt export gguf`` at each asked type into one bundle, then optionally one
``gamma-rt ask --json -v`` on a synthesized song. Each step is its own process, so its peak RSS is that
step's alone. A step that fails (killed for memory, say) is recorded with its exit status and the tail of
its stderr, and the steps that need it are skipped. The JSON holds the machine, the tool versions, wall
time, CPU time, peak RSS and every file's size.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from gamma_rt.machine import describe

from .entry import write_json

TIME = "/usr/bin/time"


def timed(cmd: list[str], work: Path) -> dict:
    """Run ``cmd`` under GNU time; its wall seconds, user+system CPU seconds and peak RSS in GiB, and on
    failure its exit status (GNU time reports a signal, e.g. 9 from the OOM killer) and the tail of its
    stderr. The command's stdout is kept under "stdout" (``ask --json`` prints its timings there)."""
    proc = subprocess.run([TIME, "-v", *cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    report = proc.stderr

    def field(label: str) -> str:
        return re.search(rf"{re.escape(label)}: (.+)", report).group(1).strip()

    wall = 0.0
    for part in field("Elapsed (wall clock) time (h:mm:ss or m:ss)").split(":"):
        wall = wall * 60 + float(part)
    step = {
        "command": " ".join(cmd).replace(str(work), "$WORK"),
        "wall_s": round(wall, 1),
        "cpu_s": round(float(field("User time (seconds)")) + float(field("System time (seconds)")), 1),
        "peak_rss_gib": round(int(field("Maximum resident set size (kbytes)")) / 2**20, 2),
        "stdout": proc.stdout,
        "stderr": report.split("\tCommand being timed")[0],
    }
    if proc.returncode != 0:
        signal = re.search(r"Command terminated by signal (\d+)", report)
        step["failed"] = {"exit_status": proc.returncode, "signal": int(signal.group(1)) if signal else None,
                          "stderr_tail": report.split("\tCommand being timed")[0][-2000:]}
        sys.stderr.write(report[-4000:])
    return step


def file_sizes(folder: Path) -> dict[str, int]:
    """Every file's size, sub-folders included (OpenMU's base/), by its path relative to ``folder``."""
    return {p.relative_to(folder).as_posix(): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}


def expert_parity(ckpt: Path, bundle: Path) -> dict:
    """One random window through the temporal expert: ORT graphs at each precision against PyTorch fp32."""
    import numpy as np
    import onnxruntime as ort
    import torch

    from gamma_rt.export.families.gamma.checkpoint import Checkpoint
    from gamma_rt.manifest import Manifest

    checkpoint, manifest = Checkpoint(ckpt), Manifest.read(bundle)
    mel = np.random.default_rng(0).standard_normal((1, checkpoint.config.temporal.num_mel_bins, 3000), np.float32)
    with torch.no_grad():
        ref = checkpoint.component("temporal_encoder")(torch.from_numpy(mel)).last_hidden_state.numpy()
    out = {}
    for key in ("temporal_encoder", "temporal_encoder.fp16"):
        if key in manifest.components:
            got = ort.InferenceSession(str(bundle / manifest.components[key].file)).run(None, {"mel": mel})[0]
            out[key] = float(np.linalg.norm(got - ref) / np.linalg.norm(ref))
    return {"input": "one window of N(0,1) log-mel, batch 1", "rel_err_vs_pytorch_fp32": out}


def ask_step(bundle: Path, work: Path, seconds: float, max_tokens: int) -> dict:
    """One ``gamma-rt ask --json -v`` on a synthesized ``seconds`` song; the step plus the answer's JSON
    (per-stage timings, backend) parsed out of its stdout, and the -v lines naming the backend and decoder."""
    from gamma_rt.synth import Music, write

    song = write(work / f"song-{seconds:g}s.flac", Music(seconds=seconds, channels=2))
    step = timed(["gamma-rt", "ask", str(bundle), str(song), "-q", "Describe this track.", "--max-tokens",
                  str(max_tokens), "--json", "-v"], work)
    out, err = step.pop("stdout"), step.pop("stderr")
    if "failed" not in step:
        step["answer"] = json.loads(out.replace(str(work), "$WORK"))
        step["verbose"] = [line for line in err.splitlines() if line.startswith(("audio backend:", "decoder:"))]
    return step


def run_step(result: dict, cmd: list[str], work: Path) -> bool:
    """Append the timed step to the result; whether it succeeded."""
    step = timed(cmd, work)
    step.pop("stdout"), step.pop("stderr")
    result["steps"].append(step)
    print(json.dumps(step), flush=True)
    return "failed" not in step


def save(result: dict, ckpt: Path, bundle: Path, out: Path) -> None:
    """Write the result so far (after every step, so an interrupted run keeps what it measured)."""
    result["checkpoint_bytes"] = file_sizes(ckpt) if ckpt.is_dir() else {}
    result["bundle_bytes"] = file_sizes(bundle) if bundle.is_dir() else {}
    write_json(out, result)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, required=True, help="folder for full-ckpt/ and full-bundle/ (tens of GB)")
    p.add_argument("--family", default="gamma", help="model family for gamma-rt init (default gamma)")
    p.add_argument("--out", type=Path, required=True, help="JSON results file")
    p.add_argument("--precision", action="append", choices=["fp32", "fp16"], help="repeatable; default fp32")
    p.add_argument("--gguf", action="append", default=[], choices=["f32", "f16", "bf16", "q8_0"],
                   help="repeatable; also export the decoder at this type (default: none)")
    p.add_argument("--ask", type=float, metavar="SECONDS", help="then run gamma-rt ask once on a song this long")
    p.add_argument("--max-tokens", type=int, default=4, help="answer length for --ask (default 4)")
    p.add_argument("--parity", action="store_true", help="also check the temporal expert graphs against PyTorch (gamma)")
    p.add_argument("--skip-export", action="store_true", help="reuse WORK/full-bundle and keep the export steps already in OUT")
    p.add_argument("--reuse-checkpoint", action="store_true", help="skip init when WORK/full-ckpt exists")
    args = p.parse_args(argv)

    from gamma_rt.export.bundle import tool_versions

    ckpt, bundle = args.work / "full-ckpt", args.work / "full-bundle"
    args.work.mkdir(parents=True, exist_ok=True)
    result = {"machine": describe(threads=os.cpu_count() or 1), "tools": tool_versions(), "family": args.family,
              "preset": "full", "steps": []}
    if args.skip_export and args.out.is_file():
        result["steps"] = [s for s in json.loads(args.out.read_text())["steps"] if " export " in s["command"]]
    ok = True
    if not (args.reuse_checkpoint and (ckpt / "config.json").is_file()):
        ok = run_step(result, ["gamma-rt", "init", "--family", args.family, "--preset", "full", "--out", str(ckpt)],
                      args.work)
    first, *later = args.precision or ["fp32"]
    # The first ONNX precision and the GGUFs make a bundle that ask runs; further precisions come last,
    # so a slow fp16 export does not hold up the figures that matter most.
    exports = [["onnx", "--precision", first], *(["gguf", "--type", t] for t in args.gguf)]
    for export in [] if args.skip_export else exports:
        ok = ok and run_step(result, ["gamma-rt", "export", export[0], str(ckpt), "--out", str(bundle), *export[1:]],
                             args.work)
        save(result, ckpt, bundle, args.out)
    if args.ask and ok:
        result["ask"] = ask_step(bundle, args.work, args.ask, args.max_tokens)
        print(json.dumps(result["ask"]), flush=True)
        save(result, ckpt, bundle, args.out)
    for precision in ([] if args.skip_export or not ok else later):
        run_step(result, ["gamma-rt", "export", "onnx", str(ckpt), "--out", str(bundle), "--precision", precision],
                 args.work)
        save(result, ckpt, bundle, args.out)
    if args.parity and ok:
        result["parity"] = expert_parity(ckpt, bundle)
    save(result, ckpt, bundle, args.out)
    print(f"wrote {args.out}")
    return 0 if ok and all("failed" not in s for s in result["steps"]) else 1


if __name__ == "__main__":
    sys.exit(main())
