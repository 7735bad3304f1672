"""The held-out real compositions: a written-down list with labels from the scores, rendered like training
songs, scored against the best constant guess, and never reached from the training source."""

from __future__ import annotations

import ast
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gamma_rt.render import available
from gamma_rt.render import real, scoring
from gamma_rt.synth import INSTRUMENTS, TONICS, Song
from gamma_rt.synthetic_tasks import answers

ROOT = Path(__file__).resolve().parents[1]
needs_music21 = pytest.mark.skipif(importlib.util.find_spec("music21") is None,
                                   reason="music21 is not installed (pip install 'gamma-rt[train]')")
needs_fluidsynth = pytest.mark.skipif(available() is not None, reason=str(available()))
# The only modules that may read real music. Anything on the training path is absent from this list.
MAY_READ_REAL_MUSIC = {"gamma_rt/render/real.py", "gamma_rt/render/scoring.py"}


def test_the_list_has_40_pieces_in_both_meters_with_valid_labels():
    listed = real.pieces()
    assert len(listed) >= 40 and len({p["name"] for p in listed}) == len(listed)
    meters = [p["meter"] for p in listed]
    assert meters.count("3/4") >= 15 and meters.count("4/4") >= 15
    for p in listed:
        song = real.song_of(p)
        tonic, mode = p["key"].split()
        assert tonic in TONICS and mode in ("major", "minor")
        assert 60 <= song.bpm <= 180 and set(song.instruments) <= set(INSTRUMENTS)
        assert set(p["parts"]) | ({"drums"} if p["drums"] else set()) == set(song.instruments)
    assert len({p["key"] for p in listed}) >= 8
    assert len({real.song_of(p).instruments for p in listed}) >= 6


@needs_music21
@pytest.mark.parametrize("index", [0, 20, 40])
def test_listed_key_and_meter_are_what_the_score_says(index, tmp_path):
    from gamma_rt.render import midi

    record = real.pieces()[index]
    entry = {"path": real._corpus_path(record), **({"number": record["number"]} if "number" in record else {})}
    score = real._parse(entry)
    assert {s.ratioString for s in score.recurse().getElementsByClass("TimeSignature")} == {record["meter"]}
    tonic, mode = real._score_key(score, record["kind"])
    assert f"{TONICS[tonic]} {mode}" == record["key"]
    written = midi.read(midi.write(tmp_path / "piece.mid", real.piece_of(record)))
    assert (TONICS[written.tonic_pc], "minor" if written.minor else "major") == tuple(record["key"].split())
    assert written.beats_per_bar == int(record["meter"][0]) and round(written.bpm) == record["bpm"]


@needs_music21
@needs_fluidsynth
def test_real_compositions_render_at_the_labelled_length_and_are_not_silent():
    listed = real.pieces()
    for (name, audio, song), record in zip(real.real_compositions(3, seconds=10.0), listed):
        assert name == record["name"] and song == real.song_of(record, 10.0)
        assert audio.dtype == np.float32 and audio.shape == (160000,)
        assert np.sqrt(np.mean(audio.astype(np.float64) ** 2)) > 1e-2


def imports_of(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return names


def test_only_the_eval_module_imports_real_music():
    offenders = []
    for folder in ("gamma_rt", "export", "runtime", "quant"):
        for path in (ROOT / folder).rglob("*.py"):
            relative = str(path.relative_to(ROOT))
            touched = {n for n in imports_of(path) if n.split(".")[0] == "music21" or n == "gamma_rt.render.real"}
            if touched and relative not in MAY_READ_REAL_MUSIC:
                offenders.append(f"{relative}: {sorted(touched)}")
    assert not offenders


def test_the_training_source_never_opens_real_music(tmp_path):
    """Render training songs with every file open recorded: no music21, no corpus file, no list of pieces."""
    script = """
import json, sys
opened = []
sys.addaudithook(lambda event, args: opened.append(str(args[0])) if event == "open" and args else None)
from gamma_rt.render import available, compose, rendered_song
from gamma_rt.synthetic_tasks import train_song
for i in range(3):
    song = train_song(i)
    compose(song)
    if available() is None:
        rendered_song(song.seed, seconds=8.0)
print(json.dumps({"opened": opened, "modules": sorted(sys.modules)}))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, check=True)
    record = json.loads(done.stdout.strip().splitlines()[-1])
    assert not [m for m in record["modules"] if m.startswith("music21") or m == "gamma_rt.render.real"]
    assert any("synth" in p for p in record["opened"])  # the hook saw the imports that came after it
    assert not [p for p in record["opened"] if "music21" in p or "real_pieces" in p]


def test_scores_count_unparseable_answers_and_beat_the_constant_guess_only_when_right():
    songs = [Song(seed=i, bpm=60 + 10 * i, tonic=TONICS[i % 12], mode=("major", "minor")[i % 2],
                  beats_per_bar=(3, 4)[i % 3 == 0], instruments=(("piano", "bass"), ("organ",), ("guitar", "drums"))[i % 3],
                  event_instrument="piano") for i in range(12)]
    truthful = [answers(s) for s in songs]
    record = scoring.score_set(songs, truthful)
    assert record["accuracy"] == {"key": 1.0, "tempo": 1.0, "meter": 1.0, "instruments": 1.0}
    assert record["unparseable_total"] == 0
    # answering the constant answer everywhere scores exactly the constant guess
    answer = record["constant_answer"]
    constant = [{"key": '{"tonic": "%s", "mode": "%s"}' % tuple(answer["key"].split()),
                 "tempo": '{"bpm": %d}' % answer["tempo"], "meter": answer["meter"],
                 "instruments": json.dumps({"instruments": answer["instruments"]})} for _ in songs]
    assert scoring.score_set(songs, constant)["accuracy"] == record["constant_guess"]
    assert record["constant_guess"]["meter"] == pytest.approx(8 / 12, abs=1e-4)
    broken = [{"key": '{"tonic": "minor"}', "tempo": "fast", "meter": "waltz", "instruments": "{}"} for _ in songs]
    bad = scoring.score_set(songs, broken)
    assert bad["unparseable"] == {"key": 12, "tempo": 12, "meter": 12, "instruments": 12}
    assert bad["accuracy"] == {"key": 0.0, "tempo": 0.0, "meter": 0.0, "instruments": 0.0}


@needs_music21
@needs_fluidsynth
def test_eval_real_prints_accuracy_beside_the_constant_guess_and_unread_answers(tmp_path, capsys):
    pytest.importorskip("torch")
    pytest.importorskip("llama_cpp")
    from gamma_rt.cli import main
    from gamma_rt.demo import build_bundle

    bundle = build_bundle(tmp_path, fresh=True, trained=True)
    assert main(["eval", str(bundle), "--real", "2", "--threads", "1", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["songs"] == 2 and record["pieces"] == [p["name"] for p in real.pieces()[:2]]
    assert set(record["accuracy"]) == set(scoring.ATTRIBUTES) == set(record["constant_guess"])
    assert set(record["example"]["replies"]) >= set(scoring.ATTRIBUTES) | {"description"}
    assert set(record["agreement"]) == {"description~key", "description~tempo", "description~meter"}
    assert all(r["agree"] + r["disagree"] + r["unparseable"] == 2 for r in record["agreement"].values())
    assert main(["eval", str(bundle), "--real", "1", "--threads", "1"]) == 0
    table = capsys.readouterr().out
    assert "constant" in table and "unread" in table and "instruments" in table
    assert "description~tempo" in table


def test_eval_real_refuses_no_pieces_and_a_checkpoint(tmp_path, capsys):
    from gamma_rt.cli import main

    assert main(["eval", str(tmp_path), "--real", "0"]) == 2
    assert "--real 0: ask at least one piece" in capsys.readouterr().err
    assert main(["eval", str(tmp_path), "--real", "2", "--checkpoint", str(tmp_path)]) == 2
    assert "--checkpoint goes with --synthetic" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["eval", str(tmp_path), "--real", "2", "--synthetic", "2"])
