"""Time and peak memory of writing and exporting the `full` preset, each step a `gamma-rt` run under `/usr/bin/time -v`.

    python -m gamma_rt.bench.full_export --work /tmp --out bench/results/full_export_cpu.json

Steps: ``gamma-rt init --preset full`` (random weights, bf16), then ``gamma-rt export onnx`` at each asked
precision into one bundle. Each step is its own process, so its peak RSS is that step's alone. The JSON holds
the machine, the tool versions, wall time, CPU time, peak RSS and every file's size.
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

TIME = "/usr/bin/time"


def timed(cmd: list[str], work: Path) -> dict:
    """Run ``cmd`` under GNU time; its wall seconds, user+system CPU seconds and peak RSS in GiB."""
    proc = subprocess.run([TIME, "-v", *cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"{' '.join(cmd)} failed with exit code {proc.returncode}")
    report = proc.stderr

    def field(label: str) -> str:
        return re.search(rf"{re.escape(label)}: (.+)", report).group(1).strip()

    wall = 0.0
    for part in field("Elapsed (wall clock) time (h:mm:ss or m:ss)").split(":"):
        wall = wall * 60 + float(part)
    return {
        "command": " ".join(cmd).replace(str(work), "$WORK"),
        "wall_s": round(wall, 1),
        "cpu_s": round(float(field("User time (seconds)")) + float(field("System time (seconds)")), 1),
        "peak_rss_gib": round(int(field("Maximum resident set size (kbytes)")) / 2**20, 2),
    }


def file_sizes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file()}


def expert_parity(ckpt: Path, bundle: Path) -> dict:
    """One random window through the temporal expert: ORT graphs at each precision against PyTorch fp32."""
    import numpy as np
    import onnxruntime as ort
    import torch

    from gamma_rt.export.checkpoint import Checkpoint
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, required=True, help="folder for full-ckpt/ and full-bundle/ (tens of GB)")
    p.add_argument("--out", type=Path, required=True, help="JSON results file")
    p.add_argument("--precision", action="append", choices=["fp32", "fp16"], help="repeatable; default fp32")
    p.add_argument("--parity", action="store_true", help="also check the temporal expert graphs against PyTorch")
    p.add_argument("--skip-export", action="store_true", help="reuse WORK/full-bundle and keep the export steps already in OUT")
    p.add_argument("--reuse-checkpoint", action="store_true", help="skip init when WORK/full-ckpt exists")
    args = p.parse_args(argv)

    from gamma_rt.export.bundle import tool_versions

    ckpt, bundle = args.work / "full-ckpt", args.work / "full-bundle"
    result = {"machine": describe(threads=os.cpu_count() or 1), "tools": tool_versions(), "preset": "full", "steps": []}
    if args.skip_export and args.out.is_file():
        result["steps"] = [s for s in json.loads(args.out.read_text())["steps"] if " export " in s["command"]]
    if not (args.reuse_checkpoint and (ckpt / "config.json").is_file()):
        result["steps"].append(timed(["gamma-rt", "init", "--preset", "full", "--out", str(ckpt)], args.work))
    for precision in [] if args.skip_export else args.precision or ["fp32"]:
        step = timed(["gamma-rt", "export", "onnx", str(ckpt), "--out", str(bundle), "--precision", precision], args.work)
        result["steps"].append(step)
        print(json.dumps(step), flush=True)
    if args.parity:
        result["parity"] = expert_parity(ckpt, bundle)
    result["checkpoint_bytes"] = file_sizes(ckpt)
    result["bundle_bytes"] = file_sizes(bundle)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
