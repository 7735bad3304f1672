"""bench/fuzz.py: the classifier calls a real llama.cpp abort a crash, and a short fuzz run writes its counts."""

from __future__ import annotations

import json
import os
import signal
import struct
import sys

import pytest

from gamma_rt.bench.fuzz import QUIET_ABORTS, classify, main, run_command
from gamma_rt.bench.fuzz_bundle import GGUFLayout

RAW_LOAD = (
    "import sys, llama_cpp; llama_cpp.llama_backend_init(); "
    "m = llama_cpp.llama_model_load_from_file(sys.argv[1].encode(), llama_cpp.llama_model_default_params()); "
    "print('loaded' if m else 'refused')"
)


def with_value(layout: GGUFLayout, label: str, value) -> bytes:
    offset, fmt = next((o, f) for name, o, f in layout.slots if name == label)
    data = bytearray(layout.data)
    struct.pack_into("<" + fmt, data, offset, value)
    return bytes(data)


def test_a_raw_llama_cpp_load_that_aborts_is_a_crash(tiny_bundle_gguf, tmp_path):
    layout = GGUFLayout(tiny_bundle_gguf / "decoder-f32.gguf")
    hostile = tmp_path / "no-layers.gguf"
    hostile.write_bytes(with_value(layout, "qwen3.block_count", 0))
    env = {**os.environ, **QUIET_ABORTS}
    outcome, rc, text = run_command([sys.executable, "-c", RAW_LOAD, hostile], 60, env=env)
    assert (outcome, rc) == ("crash", -signal.SIGABRT), text[-500:]
    outcome, rc, text = run_command([sys.executable, "-c", RAW_LOAD, tiny_bundle_gguf / "decoder-f32.gguf"], 60, env=env)
    assert (outcome, rc) == ("ok", 0) and "loaded" in text


def test_the_classifier_tells_hangs_tracebacks_and_clean_errors():
    assert run_command([sys.executable, "-c", "import time; time.sleep(60)"], 1)[:2] == ("hang", None)
    assert run_command([sys.executable, "-c", "raise ValueError('boom')"], 30)[:2] == ("traceback", 1)
    assert run_command([sys.executable, "-c", "import sys; sys.exit('error: bad input')"], 30)[:2] == ("clean-error", 1)
    assert classify(-11, "", False) == "crash" and classify(0, "fine", False) == "ok"


def test_a_short_fuzz_run_counts_every_case(tiny_bundle, tmp_path):
    out = tmp_path / "results"
    code = main(["--bundle", str(tiny_bundle), "--areas", "gguf,manifest", "--cases", "2", "--seed", "1",
                 "--timeout", "60", "--work", str(tmp_path / "work"), "--out", str(out)])
    assert code == 0
    (path,) = out.glob("fuzz-*.json")
    result = json.loads(path.read_text())
    assert result["cases"] == 4 and sum(result["counts"].values()) == 4
    assert set(result["per_area"]) == {"gguf", "manifest"}
    assert all(c["outcome"] in result["counts"] for c in result["all"])


def test_an_unknown_area_is_one_line(tmp_path, capsys):
    assert main(["--areas", "gguf,nope", "--work", str(tmp_path)]) != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("fuzz: error: --areas: unknown nope") and "\n" not in err


@pytest.mark.parametrize("area", ["server", "library", "onnx"])
def test_every_area_runs_a_case(area, tiny_bundle, tmp_path):
    out = tmp_path / "results"
    assert main(["--bundle", str(tiny_bundle), "--areas", area, "--cases", "1", "--timeout", "90",
                 "--work", str(tmp_path / "work"), "--out", str(out)]) == 0
    result = json.loads(next(out.glob("fuzz-*.json")).read_text())
    assert result["cases"] == 1 and result["all"][0]["area"] == area
