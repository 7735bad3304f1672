"""Control characters never reach the terminal raw (issue 23): model answers (ask, --stream, chat), file
names and manifest strings in the CLI's one-line errors, and tag's dry-run and summary lines are escaped;
--json and the records stay exact."""

from __future__ import annotations

import io
import json
import re
import shutil
import sys

import numpy as np
import pytest
import soundfile as sf
from tag_fixtures import write_good
from test_tag_run import SMALL_PROMPTS

from gamma_rt.cli import main
from gamma_rt.runtime.tagging.records import read_records
from gamma_rt.terminal import printable

RAW = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # what a terminal acts on (\t and \n aside)
ESC_NAME = "a\x1b[2Jb\x9bc\x07"  # clear screen, a C1 CSI, a bell
ASK = ["--threads", "1", "--max-tokens", "48", "--temperature", "1.0"]


def test_printable_escapes_c0_del_c1_and_keeps_layout_only_when_asked():
    text = "x\x1b[31my\x7f\x85\x9b\r\tz\nw\x00"
    assert printable(text) == "x\\x1b[31my\\x7f\\x85\\x9b\\r\\tz\\nw\\x00"
    assert printable(text, layout=True) == "x\\x1b[31my\\x7f\\x85\\x9b\\r\tz\nw\\x00"
    assert printable("naïve — 日本 ♪") == "naïve — 日本 ♪"  # printable text is untouched


def test_a_name_byte_that_is_not_utf8_prints_as_that_byte():
    name = b"caf\xe9.flac".decode("utf-8", "surrogateescape")
    assert printable(name) == "caf\\xe9.flac"
    printable(name).encode("utf-8")  # a terminal's encoding takes it


@pytest.fixture(scope="module")
def song(tmp_path_factory):
    path = tmp_path_factory.mktemp("terminal_song") / "song.wav"
    sf.write(path, (np.random.default_rng(0).standard_normal(32000) * 0.1).astype(np.float32), 16000)
    return path


def _run(capsys, *argv, stdin: str | None = None, monkeypatch=None) -> tuple[int, str, str]:
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def controlled(tiny_bundle, song):
    """(seed, exact answer) of the first seed whose sampled answer from the tiny random model holds a control
    character, read from --json (which is exact)."""
    question = "What genre?"
    for seed in range(1, 20):
        out = io.StringIO()
        stdout, sys.stdout = sys.stdout, out
        try:
            assert main(["ask", str(tiny_bundle), str(song), "-q", question, *ASK, "--seed", str(seed),
                         "--json"]) == 0
        finally:
            sys.stdout = stdout
        answer = json.loads(out.getvalue())["answers"][0]["answer"]
        if RAW.search(answer):
            return seed, question, answer
    pytest.fail("no seed made the tiny model answer with a control character")


def test_ask_json_keeps_the_answer_exact_and_the_text_escapes_it(tiny_bundle, song, controlled, capsys):
    seed, question, answer = controlled
    code, out, _ = _run(capsys, "ask", tiny_bundle, song, "-q", question, *ASK, "--seed", seed)
    assert code == 0
    assert not RAW.search(out)
    assert out == printable(answer, layout=True) + "\n"


def test_ask_stream_escapes_each_piece(tiny_bundle, song, controlled, capsys):
    seed, question, answer = controlled
    code, out, _ = _run(capsys, "ask", tiny_bundle, song, "-q", question, *ASK, "--seed", seed, "--stream")
    assert code == 0
    assert not RAW.search(out)
    assert out == printable(answer, layout=True) + "\n"


def test_chat_escapes_the_answers(tiny_bundle, song, controlled, capsys, monkeypatch):
    seed, question, answer = controlled
    code, out, _ = _run(capsys, "chat", tiny_bundle, song, *ASK, "--seed", seed, stdin=f"{question}\n\n",
                        monkeypatch=monkeypatch)
    assert code == 0
    assert not RAW.search(out)
    assert out == printable(answer, layout=True) + "\n"  # the first turn is the same prompt as ask's


def test_a_file_name_with_controls_is_escaped_in_the_one_line_error(tiny_bundle, tmp_path, capsys):
    missing = tmp_path / f"{ESC_NAME}.wav"
    code, _, err = _run(capsys, "ask", tiny_bundle, missing, "-q", "x", "--threads", "1")
    assert code != 0
    assert len(err.strip().splitlines()) == 1 and not RAW.search(err)
    assert printable(ESC_NAME) in err


def test_a_manifest_string_with_controls_is_escaped_in_the_one_line_error(tiny_bundle, song, tmp_path, capsys):
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["audio"]["chain"][2]["component"] = f"fusion{ESC_NAME}\n"
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    code, _, err = _run(capsys, "ask", bundle, song, "-q", "x", "--threads", "1")
    assert code != 0
    assert len(err.strip().splitlines()) == 1 and not RAW.search(err)
    assert printable(ESC_NAME) in err


@pytest.fixture
def library(tmp_path, tiny_bundle):
    """A real library holding one track whose name holds controls, a prompt set, and an --out whose name does."""
    lib = tmp_path / "lib"
    track = write_good(lib, "rock/intro.wav")
    named = track.with_name(f"{ESC_NAME}.wav")
    track.rename(named)
    prompts = tmp_path / "small.toml"
    prompts.write_text(SMALL_PROMPTS)
    out = tmp_path / f"out{ESC_NAME}"
    argv = ["tag", lib, "--bundle", tiny_bundle, "--out", out, "--prompts", prompts, "--quiet", "--threads", "1"]
    return named, out, argv


def test_tag_dry_run_escapes_the_track_names(library, capsys):
    named, _, argv = library
    code, out, _ = _run(capsys, *argv, "--dry-run")
    assert code == 0 and not RAW.search(out)
    assert f"would ask (new): {printable(named.resolve())}\n" in out


def test_tag_summary_escapes_the_names_and_the_records_keep_them_exact(library, capsys):
    named, out_dir, argv = library
    code, out, err = _run(capsys, *argv)
    assert code in (0, 1) and not RAW.search(out + err)
    assert f"results in {printable(out_dir / 'records.jsonl')}" in err
    assert [r["path"] for r in read_records(out_dir / "records.jsonl", "jsonl")] == [str(named.resolve())]
