"""``gamma-rt ask``, ``chat`` and ``demo`` as a user runs them, and every bad input of the issue.

A user's mistake must give exactly one line on stderr, a non-zero exit code and no traceback.
"""

from __future__ import annotations

import json
import shutil
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from gamma_rt.cli import main
from gamma_rt.terminal import printable

ASK = ["--threads", "1", "--max-tokens", "8"]


@pytest.fixture(scope="module")
def song(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli_song") / "song.flac"
    t = np.arange(16000 * 12) / 16000
    sf.write(path, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 16000)
    return path


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("gamma-rt: error:") and "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]


# --- what works -------------------------------------------------------------------------------------


def test_ask_prints_one_answer_per_question(capsys, tiny_bundle, song):
    code, out, err = run_cli(capsys, "ask", tiny_bundle, song, "-q", "Genre?", "-q", "Tempo?", *ASK,
                             "--temperature", "0.9")
    assert code == 0, err
    assert out.count("Q: ") == 2 and out.count("A: ") == 2


def test_ask_json_holds_answers_backend_and_timings(capsys, tiny_bundle, song):
    code, out, err = run_cli(capsys, "ask", tiny_bundle, song, "-q", "Genre?", *ASK, "--json", "--seed", "3",
                             "--temperature", "0.9")
    assert code == 0, err
    data = json.loads(out)
    assert data["answers"][0]["question"] == "Genre?"
    assert data["backend"] == "ort-cpu" and data["precision"] == "fp32"
    assert data["timings_ms"]["temporal_encoder"]["calls"] == 1
    assert data["figures_ms"]["after_audio_ms"] > 0
    # --stream prints the same answer, piece by piece, its control characters escaped (the random model's)
    code, streamed, err = run_cli(capsys, "ask", tiny_bundle, song, "-q", "Genre?", *ASK, "--stream", "--seed", "3",
                                  "--temperature", "0.9")
    assert code == 0, err
    assert streamed.rstrip("\n") == printable(data["answers"][0]["answer"], layout=True)


def test_verbose_names_the_backend_and_prints_stage_timings(capsys, tiny_bundle, song):
    code, out, err = run_cli(capsys, "ask", tiny_bundle, song, "-q", "Genre?", *ASK, "--verbose")
    assert code == 0
    assert "audio backend: ort-cpu" in err
    import llama_cpp

    if llama_cpp.llama_supports_gpu_offload():  # a CUDA build of llama.cpp (native/build.sh cuda ARCH)
        assert "decoder: decoder-f32.gguf, all layers on the GPU" in err
    else:
        assert "decoder: decoder-f32.gguf on the CPU (this llama.cpp build has no GPU offload)" in err
    code, out, err = run_cli(capsys, "ask", tiny_bundle, song, "-q", "Genre?", *ASK, "-v", "--gpu-layers", "0")
    assert code == 0 and "decoder: decoder-f32.gguf on the CPU (--gpu-layers 0)" in err
    for stage in ("front_end", "temporal_encoder", "global_encoder", "fusion", "projector", "prefill", "decode"):
        assert stage in err


def test_chat_answers_each_stdin_line(capsys, monkeypatch, tiny_bundle, song):
    import io

    monkeypatch.setattr(sys, "stdin", io.StringIO("Genre?\nAnd the tempo?\n\nnever asked\n"))
    code, out, err = run_cli(capsys, "chat", tiny_bundle, song, *ASK, "--temperature", "0.9")
    assert code == 0, err
    # the empty line ended the chat: two turns, the same as a Conversation through the API
    from gamma_rt.runtime.decoder import Sampling
    from gamma_rt.runtime.pipeline import Pipeline

    with Pipeline.open(tiny_bundle, threads=1) as pipe:
        talk = pipe.conversation(song)
        expected = [talk.ask(q, Sampling(temperature=0.9), 8) for q in ("Genre?", "And the tempo?")]
    assert out == "".join(printable(a, layout=True) + "\n" for a in expected)  # as a terminal shows them
    assert any(expected)


def _commands(parser=None, prefix="") -> list[str]:
    """Every command and subcommand the CLI has, as typed: "ask", "export onnx", ..."""
    import argparse

    from gamma_rt.cli import build_parser

    parser = parser or build_parser()
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += [prefix + name, *_commands(sub, prefix + name + " ")]
    return found


# Commands whose --help has no description or no example yet; their owners add them (export/commands.py: init,
# export; export/onnx_export.py, export/gguf_export.py: export onnx, export gguf). Reported as xfail until then.
EXAMPLES_OWED = {"init", "export", "export onnx", "export gguf"}


@pytest.mark.parametrize("command", _commands())
def test_every_subcommand_explains_itself(capsys, command):
    with pytest.raises(SystemExit) as e:
        main([*command.split(), "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: gamma-rt {command} ")
    # a description between the usage and the arguments, and at least one example of the command in use
    described = len(out) > 400 and not out.split("\n\n")[1].startswith(("positional arguments", "options"))
    examples = [line.strip() for line in out.splitlines() if f"gamma-rt {command} " in line]
    if command in EXAMPLES_OWED and not (described and examples):
        pytest.xfail(f"`gamma-rt {command} --help` has no description or no example yet")
    assert described, f"`gamma-rt {command} --help` has no description"
    assert examples, f"`gamma-rt {command} --help` shows no example line"


def test_one_sample_audio_works(capsys, tiny_bundle, tmp_path):
    path = tmp_path / "one.wav"
    sf.write(path, np.array([0.1], np.float32), 16000)
    code, out, err = run_cli(capsys, "ask", tiny_bundle, path, "-q", "Genre?", *ASK, "--json",
                             "--temperature", "0.9", "--seed", "3")
    assert code == 0, err
    data = json.loads(out)
    assert data["duration_s"] == pytest.approx(1 / 16000)
    assert data["answers"][0]["answer"].strip()
    # one window, padded: each audio graph ran once
    assert {data["timings_ms"][stage]["calls"] for stage in ("temporal_encoder", "global_encoder", "projector")} == {1}


def test_eight_channel_96khz_audio_works(capsys, tiny_bundle, tmp_path):
    path = tmp_path / "surround.wav"
    t = np.arange(96000 * 2) / 96000
    sf.write(path, np.stack([np.sin(2 * np.pi * (200 + 50 * c) * t) * 0.1 for c in range(8)], 1).astype(np.float32),
             96000, subtype="FLOAT")
    code, out, err = run_cli(capsys, "ask", tiny_bundle, path, "-q", "Genre?", *ASK, "--json")
    assert code == 0, err
    assert json.loads(out)["duration_s"] == pytest.approx(2.0)


# --- bad audio ------------------------------------------------------------------------------------


def _flac_bytes(tmp_path) -> bytes:
    path = tmp_path / "full.flac"
    sf.write(path, np.random.default_rng(0).uniform(-0.5, 0.5, 16000 * 40).astype(np.float32), 16000)
    return path.read_bytes()


def _mp3_bytes(tmp_path) -> bytes:
    path = tmp_path / "full.mp3"
    sf.write(path, np.random.default_rng(0).uniform(-0.5, 0.5, 16000 * 40).astype(np.float32), 16000)
    return path.read_bytes()


BAD_AUDIO = {
    "empty.wav": lambda tmp: b"",
    "zero-length.wav": None,  # a valid WAV header with no frames, written below
    "truncated.flac": lambda tmp: _flac_bytes(tmp)[: len(_flac_bytes(tmp)) // 3],
    "corrupt.flac": lambda tmp: _flac_bytes(tmp)[:200] + bytes(np.random.default_rng(1).integers(0, 256, 60000, np.uint8)),
    "truncated.mp3": lambda tmp: _mp3_bytes(tmp)[: len(_mp3_bytes(tmp)) // 3],
    "corrupt.mp3": lambda tmp: bytes(np.random.default_rng(2).integers(0, 256, 50000, np.uint8)),
    "text.wav": lambda tmp: b"this is not audio, just a text file named .wav\n" * 20,
    "missing.wav": "missing",
}


@pytest.mark.parametrize("name", sorted(BAD_AUDIO))
def test_bad_audio_is_one_line_naming_the_file(capsys, tiny_bundle, tmp_path, name):
    path = tmp_path / name
    make = BAD_AUDIO[name]
    if name.endswith(".mp3") and "MP3" not in sf.available_formats():
        pytest.skip("this libsndfile cannot write MP3 to make the test file")
    if make is None:
        sf.write(path, np.zeros(0, np.float32), 16000)
    elif callable(make):
        path.write_bytes(make(tmp_path))
    code, out, err = run_cli(capsys, "ask", tiny_bundle, path, "-q", "Genre?", *ASK)
    assert_one_line_error(code, err, name)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_samples_are_refused(capsys, tiny_bundle, tmp_path, value):
    samples = np.zeros(16000 * 3, np.float32)
    samples[20000] = value
    path = tmp_path / "nonfinite.wav"
    sf.write(path, samples, 16000, subtype="FLOAT")
    code, out, err = run_cli(capsys, "ask", tiny_bundle, path, "-q", "Genre?", *ASK)
    assert_one_line_error(code, err, "nonfinite.wav")


@pytest.mark.parametrize("command", ["ask", "tag"])
def test_negative_gpu_layers_is_refused(capsys, tiny_bundle, song, tmp_path, command):
    if command == "ask":
        argv = ["ask", tiny_bundle, song, "-q", "Genre?", *ASK]
    else:
        argv = ["tag", tmp_path, "--bundle", tiny_bundle, "--out", tmp_path / "out", "--quiet"]
    code, out, err = run_cli(capsys, *argv, "--gpu-layers", "-2")
    assert_one_line_error(code, err, "--gpu-layers must be 0 or more, got -2")


# --- bad bundles ----------------------------------------------------------------------------------


def _copy(tiny_bundle, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    return bundle


def _edit_manifest(bundle, change):
    m = json.loads((bundle / "manifest.json").read_text())
    change(m)
    (bundle / "manifest.json").write_text(json.dumps(m))


def test_bundle_missing_file(capsys, tiny_bundle, tmp_path, song):
    bundle = _copy(tiny_bundle, tmp_path)
    (bundle / "fusion.onnx").unlink()
    code, _, err = run_cli(capsys, "ask", bundle, song, "-q", "Genre?", *ASK)
    assert_one_line_error(code, err, "fusion.onnx", "missing")


def test_bundle_hash_mismatch(capsys, tiny_bundle, tmp_path, song):
    bundle = _copy(tiny_bundle, tmp_path)
    data = bytearray((bundle / "decoder-f32.gguf").read_bytes())
    data[-100] ^= 0xFF  # same size, one byte changed
    (bundle / "decoder-f32.gguf").write_bytes(bytes(data))
    code, _, err = run_cli(capsys, "ask", bundle, song, "-q", "Genre?", *ASK)
    assert_one_line_error(code, err, "decoder-f32.gguf", "sha256")


def test_bundle_of_a_newer_schema(capsys, tiny_bundle, tmp_path, song):
    bundle = _copy(tiny_bundle, tmp_path)
    _edit_manifest(bundle, lambda m: m.update(schema_version=99))
    code, _, err = run_cli(capsys, "ask", bundle, song, "-q", "Genre?", *ASK)
    assert_one_line_error(code, err, "manifest.json", "schema_version", "newer")


def test_bundle_with_mismatched_widths(capsys, tiny_bundle, tmp_path, song):
    bundle = _copy(tiny_bundle, tmp_path)
    _edit_manifest(bundle, lambda m: m["components"]["decoder"]["extra"].update(n_embd=128))
    code, _, err = run_cli(capsys, "ask", bundle, song, "-q", "Genre?", *ASK)
    assert_one_line_error(code, err, "n_embd", "projector")


def test_bundle_folder_missing(capsys, tmp_path, song):
    code, _, err = run_cli(capsys, "ask", tmp_path / "nowhere", song, "-q", "Genre?")
    assert_one_line_error(code, err, "nowhere")


def test_bundle_without_the_requested_decoder(capsys, tiny_bundle, song):
    code, _, err = run_cli(capsys, "ask", tiny_bundle, song, "-q", "Genre?", *ASK, "--decoder", "decoder.q4_k_m")
    assert_one_line_error(code, err, "decoder.q4_k_m")


def test_unavailable_backend_says_why(capsys, tiny_bundle, song):
    code, _, err = run_cli(capsys, "ask", tiny_bundle, song, "-q", "Genre?", *ASK, "--backend", "ort-cuda")
    assert_one_line_error(code, err, "CUDAExecutionProvider")


# --- the README's first command -------------------------------------------------------------------


def test_demo_answers_with_the_trained_builtin_beside_the_truth(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "gamma_rt.cli", "demo", "--workdir", str(tmp_path / "demo"),
                           "--threads", "1"], capture_output=True, text=True, cwd=tmp_path, timeout=600,
                          env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "answers of the trained built-in, beside the truth" in proc.stdout
    assert '{"tonic": "D", "mode": "minor"}' in proc.stdout  # the demo song's truth, printed beside the answer
    assert "held-out accuracy" in proc.stdout
    for pair in ("description~key: ", "description~tempo: ", "description~meter: "):  # do its answers agree
        assert pair in proc.stdout
    for stage in ("temporal_encoder", "global_encoder", "fusion", "projector", "prefill", "decode"):
        assert stage in proc.stdout
    assert (tmp_path / "demo" / "bundle-trained" / "manifest.json").is_file()


def test_demo_runs_end_to_end_from_nothing(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "gamma_rt.cli", "demo", "--random", "--workdir",
                           str(tmp_path / "demo"), "--threads", "1"], capture_output=True, text=True, cwd=tmp_path,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "[5/5] answer" in proc.stdout and "nonsense" in proc.stdout
    for stage in ("temporal_encoder", "global_encoder", "fusion", "projector", "prefill", "decode"):
        assert stage in proc.stdout
    assert (tmp_path / "demo" / "bundle" / "manifest.json").is_file()
    assert sf.info(str(tmp_path / "demo" / "demo-music.flac")).duration == pytest.approx(20.0)


def test_decoder_commands_load_onnxruntime_then_llama_cpp_first_and_export_commands_load_neither():
    """The import order that lets a CUDA build of llama.cpp run (see gamma_rt/cli.py), in a fresh process."""
    code = """
import sys
from gamma_rt.cli import load_native_libraries_first
load_native_libraries_first(sys.argv[1:])
order = list(sys.modules)
print(",".join(m for m in ("onnxruntime", "llama_cpp", "numpy", "torch") if m in order))
print(",".join(str(order.index(m)) for m in ("onnxruntime", "llama_cpp") if m in order))
"""
    def run(*argv):
        out = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, check=True).stdout
        return [line.split(",") for line in out.splitlines()]

    loaded, where = run("ask", "bundle", "song.wav")
    assert loaded == ["onnxruntime", "llama_cpp", "numpy"]
    # sys.modules keeps the order in which imports finished: onnxruntime (numpy within it) before llama_cpp
    assert int(where[0]) < int(where[1])
    loaded, _ = run("export", "onnx", "ckpt")
    assert "llama_cpp" not in loaded and "torch" not in loaded
