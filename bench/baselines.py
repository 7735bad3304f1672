"""The PyTorch way, measured in a child process: eager audio side, transformers generate, the reference pipeline.

For a GaMMA checkpoint, its own modules (export/families/gamma/checkpoint.py, reference.py); for a folder whose
config.json names a transformers class (Music Flamingo, Audio Flamingo 3), that class (bench/hf_baseline.py).

A child of its own, so that torch never loads into the process that times the runtime (the runtime
imports no torch, and torch's idle OpenMP workers would steal the cores ONNX Runtime and llama.cpp
run on), and so that each side's peak RSS is its own.

    python -m gamma_rt.bench.baselines REQUEST.json     # prints one JSON object on stdout
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from gamma_rt.errors import GammaError
from gamma_rt.machine import peak_device_mib, peak_rss_mib


def run_baselines(request: dict) -> dict:
    """Measure what ``request`` asks in a fresh interpreter; returns its JSON answer."""
    proc = subprocess.run([sys.executable, "-m", "gamma_rt.bench.baselines", "-"], input=json.dumps(request),
                          capture_output=True, text=True)
    if proc.returncode != 0:
        # a crash of the baseline is a bug (in torch code or here): keep its traceback visible
        raise RuntimeError(f"PyTorch baseline process failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    if "error" in out:
        raise GammaError(out["error"])
    return out


def _measure(request: dict) -> dict:
    from .hf_baseline import model_class

    if model_class(request["checkpoint"]) is not None:
        return _measure_transformers(request)
    from .audio_side import time_eager
    from .decoder_side import transformers_generate

    threads, repeat, warmup = request["threads"], request["repeat"], request["warmup"]
    mel = np.load(request["mel"])
    embeddings = np.load(request["embeddings"])
    out = {
        "audio_side": {k: v.to_dict() for k, v in time_eager(request["checkpoint"], mel, threads, repeat, warmup).items()},
        "decoder": {k: v.to_dict() for k, v in transformers_generate(request["checkpoint"], embeddings,
                                                                      request["n_decode"], threads, repeat,
                                                                      warmup).items()},
    }
    out["reference_pipeline"] = _reference_pipeline(request)
    out["memory"] = {"peak_rss_mib": peak_rss_mib(), "peak_device_mib": peak_device_mib()}
    return out


def _measure_transformers(request: dict) -> dict:
    """The same figures for a folder transformers runs itself (bench/hf_baseline.py)."""
    from . import hf_baseline
    from .end_to_end import QUESTION

    threads, repeat, warmup = request["threads"], request["repeat"], request["warmup"]
    model, processor = hf_baseline.load(request["checkpoint"], threads)
    audio = hf_baseline.time_audio_side(model, np.load(request["mel"]), repeat, warmup)
    decoder = hf_baseline.time_generate(model, np.load(request["embeddings"]), request["n_decode"], repeat, warmup)
    return {
        "audio_side": {k: v.to_dict() for k, v in audio.items()},
        "decoder": {k: v.to_dict() for k, v in decoder.items()},
        "reference_pipeline": hf_baseline.time_reference(model, processor, request, QUESTION),
        "memory": {"peak_rss_mib": peak_rss_mib(), "peak_device_mib": peak_device_mib()},
    }


def _reference_pipeline(request: dict) -> dict:
    """End to end on the audio file through export/families/gamma/reference.py, where that module exists in this tree."""
    try:
        reference = importlib.import_module("gamma_rt.export.families.gamma.reference")
    except ModuleNotFoundError as e:
        if e.name != "gamma_rt.export.families.gamma.reference":
            raise
        return {"absent": "export/families/gamma/reference.py (the PyTorch reference pipeline) is not in this tree"}
    from .end_to_end import time_reference_pipeline

    return time_reference_pipeline(reference, request)


def main() -> int:
    request = json.loads(sys.stdin.read() if sys.argv[1:] == ["-"] else Path(sys.argv[1]).read_text())
    try:
        out = _measure(request)
    except GammaError as e:
        out = {"error": str(e)}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
