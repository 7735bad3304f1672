"""``gamma-rt demo --song FILE``: the trained built-in answers the demo's questions about a real audio file (a
rendered song written as FLAC and MP3; of a long one, 15 s from its middle, or the whole file window by window),
with a consistency line per pair and the note of what it can and cannot know; a bad file or span fails in one
line, exit code 2, before any export."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from gamma_rt.agreement import PAIRS, pair_name
from gamma_rt.demo import BUILTIN, DEMO_ATTRIBUTES
from gamma_rt.demo_song import NOTE_TITLE, note
from gamma_rt.synth import Song, render
from gamma_rt.synthetic_tasks import CLIP_SECONDS, QUESTION_OF

pytestmark = pytest.mark.skipif(not (BUILTIN / "model.safetensors").is_file(), reason="no built-in model shipped")
SONG = Song(seed=1_999_999_998, seconds=15.0, bpm=120, tonic="A", mode="major", beats_per_bar=4,
            instruments=("organ", "drums"), event_instrument="organ", event="stops", event_second=9)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A demo workdir whose built-in bundle is built once; each demo run below reuses it."""
    pytest.importorskip("torch")
    pytest.importorskip("llama_cpp")
    from gamma_rt.demo import build_bundle

    folder = tmp_path_factory.mktemp("demo")
    build_bundle(folder, fresh=False, trained=True)
    return folder


def demo(capsys, monkeypatch, *args) -> tuple[int, str, str]:
    from gamma_rt.cli import main

    monkeypatch.setenv("COLUMNS", "200")  # rich folds table cells at the terminal width
    code = main(["demo", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def assert_names_every_question_and_the_note(out: str) -> None:
    for attribute in DEMO_ATTRIBUTES:
        assert QUESTION_OF[attribute].text in out
    for pair in PAIRS:
        assert f"  {pair_name(pair)}: " in out
    assert NOTE_TITLE in out
    for line in note(CLIP_SECONDS):
        assert line in out
    assert "held-out accuracy" in out


@pytest.mark.parametrize("fmt", ["FLAC", "MP3"])
def test_demo_song_answers_every_question_about_a_real_file(workdir, tmp_path, capsys, monkeypatch, fmt):
    from gamma_rt.demo_song import song_answers

    path = tmp_path / f"my song.{fmt.lower()}"
    sf.write(path, render(SONG, 44100), 44100, format=fmt)
    code, out, err = demo(capsys, monkeypatch, "--song", path, "--workdir", workdir, "--threads", 1)
    assert code == 0, err
    assert "reusing" in err  # the module's bundle, not a new export
    assert f"answers of the trained built-in about {path.name}, the whole file (0:15.0)" in out
    assert "It heard" not in out  # 15 s: what it was trained on
    assert_names_every_question_and_the_note(out)
    rows, replies, _ = song_answers(workdir / "bundle-trained", path, threads=1)
    for _, answer in rows:  # the printed answers are the model's own (greedy, so the same again)
        assert answer.strip() and answer in out
    from gamma_rt.agreement import agreements

    for agreement in agreements(replies):
        assert agreement.line() in out


@pytest.mark.parametrize("span, heard, whole", [
    ((), "15 s from 0:30.0 of 1:15.0", False),  # the middle clip, the length the built-in was trained on
    (("--segment", "end:10"), "10 s from 1:05.0 of 1:15.0", False),
    (("--whole",), "the whole file (1:15.0)", True),
])
def test_of_a_long_file_it_hears_the_middle_clip_or_all_window_by_window(workdir, tmp_path, capsys, monkeypatch,
                                                                          span, heard, whole):
    long = Song(**{**SONG.__dict__, "seconds": 75.0})
    path = tmp_path / "long.ogg"
    sf.write(path, render(long, 22050), 22050, format="OGG", subtype="VORBIS")
    code, out, err = demo(capsys, monkeypatch, "--song", path, *span, "--workdir", workdir, "--threads", 1)
    assert code == 0, err
    assert_names_every_question_and_the_note(out)
    assert f"about long.ogg, {heard}" in out
    assert ("It heard 75 s, window by window, but it was trained on 15 s clips" in out) == whole


def bad_files(folder):
    flac = folder / "good.flac"
    sf.write(flac, np.random.default_rng(1).uniform(-0.5, 0.5, 3 * 44100).astype(np.float32), 44100)
    data = flac.read_bytes()
    files = {
        "missing": (folder / "nope.mp3", "no such audio file"),
        "folder": (folder, "is a folder"),
        "zero-length": (folder / "empty.flac", "empty file"),
        "text named .mp3": (folder / "notes.mp3", "not a decodable audio file"),
        "random bytes": (folder / "noise.wav", "not a WAV file"),
        "truncated FLAC": (folder / "cut.flac", "truncated"),
        "hostile header": (folder / "evil.flac", "not a decodable audio file"),
    }
    files["zero-length"][0].write_bytes(b"")
    files["text named .mp3"][0].write_text("this is not music\n" * 50)
    files["random bytes"][0].write_bytes(np.random.default_rng(0).bytes(5000))
    files["truncated FLAC"][0].write_bytes(data[: 2 * len(data) // 3])
    files["hostile header"][0].write_bytes(data[:4] + b"\xff" * 60 + data[64:])
    return files


@pytest.mark.parametrize("case", ["missing", "folder", "zero-length", "text named .mp3", "random bytes",
                                  "truncated FLAC", "hostile header"])
def test_a_bad_file_fails_in_one_line_before_any_export(tmp_path, capsys, monkeypatch, case):
    path, words = bad_files(tmp_path)[case]
    code, out, err = demo(capsys, monkeypatch, "--song", path, "--workdir", tmp_path / "wd", "--threads", 1)
    assert code == 2
    assert err.startswith("gamma-rt: error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert words.lower() in err.lower()
    assert not (tmp_path / "wd" / "bundle-trained").exists()  # failed before the export, in a second


@pytest.mark.parametrize("args, words", [
    (("--segment", "middle:nan"), "expected start:S"),
    (("--segment", "later:15"), "expected start:S"),
    (("--segment", "middle:15", "--whole"), None),  # argparse: not allowed with
])
def test_a_bad_span_fails_in_one_line_before_any_export(tmp_path, capsys, monkeypatch, args, words):
    path = tmp_path / "s.flac"
    sf.write(path, np.zeros(16000, np.float32), 16000)
    try:
        code, _, err = demo(capsys, monkeypatch, "--song", path, *args, "--workdir", tmp_path / "wd")
    except SystemExit as exit_:  # argparse's own usage error
        code, err = exit_.code, capsys.readouterr().err
        assert "not allowed with" in err
    assert code == 2 and "Traceback" not in err
    if words:
        assert err.startswith("gamma-rt: error: ") and err.count("\n") == 1 and words in err
    assert not (tmp_path / "wd" / "bundle-trained").exists()


def test_a_span_without_a_song_is_refused(tmp_path, capsys, monkeypatch):
    code, _, err = demo(capsys, monkeypatch, "--whole", "--workdir", tmp_path / "wd")
    assert code == 2 and "give --song" in err and not (tmp_path / "wd").exists()


def test_song_with_the_random_model_is_refused(tmp_path, capsys, monkeypatch):
    path = tmp_path / "s.flac"
    sf.write(path, np.zeros(16000, np.float32), 16000)
    code, _, err = demo(capsys, monkeypatch, "--song", path, "--random", "--workdir", tmp_path / "wd")
    assert code == 2 and "--random" in err and err.count("\n") == 1


def test_a_bundle_compiled_from_another_checkpoint_is_rebuilt_not_reused(tiny_bundle, tmp_path, capsys):
    """A workdir from before the built-in was retrained must not answer with the old weights."""
    import shutil

    from gamma_rt.demo import build_bundle
    from gamma_rt.export.families.gamma.checkpoint import Checkpoint
    from gamma_rt.manifest import Manifest

    shutil.copytree(tiny_bundle, tmp_path / "bundle-trained")  # the random tiny model's, in the built-in's place
    bundle = build_bundle(tmp_path, fresh=False, trained=True)
    assert "compiled from another checkpoint" in capsys.readouterr().err
    assert Manifest.read(bundle).source["checkpoint_sha256"] == Checkpoint(BUILTIN).hash()
    build_bundle(tmp_path, fresh=False, trained=True)
    assert "reusing" in capsys.readouterr().err
