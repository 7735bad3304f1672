"""bench/tag_accuracy.py for real at two tracks: the trained built-in's bundle, a generated labelled library,
the real `gamma-rt tag --write-tags` in a subprocess, the tags read back with mutagen, scored against the labels
beside `gamma-rt eval` on the same songs. The scoring is checked on its own: the template answers score 1 and
a wrong tag 0, so the measurement can fail. No accuracy of the current model is asserted (it is retrained)."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stdout
from dataclasses import replace

import pytest

pytest.importorskip("torch")
pytest.importorskip("llama_cpp")
pytest.importorskip("mutagen")

from gamma_rt.bench.tag_accuracy import (FORMATS, RECORD_ATTRIBUTES, expected_tags, main, make_library,  # noqa: E402
                                         read_title, score_track, template_answers)
from gamma_rt.runtime.tagging.file_tags import read_tags  # noqa: E402
from gamma_rt.runtime.tagging.prompt_sets import PromptSet  # noqa: E402
from gamma_rt.synthetic_tasks import ATTRIBUTES, eval_song  # noqa: E402

TRACKS = 2
SEED = 7


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tag_accuracy")
    out = folder / "tag_accuracy.json"
    printed = io.StringIO()
    with redirect_stdout(printed):
        rc = main(["--tracks", str(TRACKS), "--seed", str(SEED), "--threads", "2", "--work", str(folder / "work"),
                   "--out", str(out)])
    assert rc == 0
    return json.loads(out.read_text()), printed.getvalue(), folder / "work"


def test_every_track_has_a_record_and_the_tags_written_are_its_answers(measured):
    result, _, work = measured
    assert result["counts"]["tracks"] == TRACKS and result["counts"]["missing"] == 0
    assert result["counts"]["ok"] + result["counts"]["failed"] == TRACKS
    assert "--write-tags" in result["tag_run"]["command"]
    prompts = {p.tag: p for p in PromptSet.default().prompts if p.tag}
    for track in result["tracks"]:
        assert track["status"] in ("ok", "failed")
        # what mutagen reads from the file now is what --write-tags made of the record
        assert read_tags(work / "library" / track["file"]) == track["tags"]
        if track["status"] == "ok":
            assert track["tags"] == {f: p.tag_value(track["answers"].get(p.name)) for f, p in prompts.items()}
        assert track["title_kept"]
    labels = json.loads((work / "library" / "labels.json").read_text())
    assert [label["file"] for label in labels] == [t["file"] for t in result["tracks"]]


def test_the_tracks_are_held_out_songs_that_eval_asks_too(measured):
    result, _, _ = measured
    for i, track in enumerate(result["tracks"]):
        assert track["song"]["seed"] == eval_song(i, SEED).seed != eval_song(i, 0).seed
        assert set(track["eval_scores"]) == set(track["eval_on_files_scores"]) == set(ATTRIBUTES)
    acc = result["accuracy"]
    assert set(acc["eval"]) == set(ATTRIBUTES) and set(acc["tag_minus_eval_points"]) == set(RECORD_ATTRIBUTES)


def test_scores_are_fractions_and_the_accuracy_is_their_mean(measured):
    result, printed, _ = measured
    tracks = result["tracks"]
    for track in tracks:
        scores = {**track["scores"], **track["answer_exact"], **track["eval_scores"]}
        assert all(0.0 <= v <= 1.0 for v in scores.values()), scores
        assert {"key", "tempo", "instruments", "mood_tag", "caption_tag", "caption_key"} <= set(track["scores"])
    for name, value in result["accuracy"]["tag"].items():
        assert value == pytest.approx(sum(t["scores"][name] for t in tracks) / len(tracks), abs=1e-4)
    assert "mood tag (exact)" in printed and "wrote " in printed


def test_the_template_answers_score_one_and_a_wrong_tag_zero():
    prompt_set = PromptSet.default()
    for i in range(5):
        song = eval_song(i, SEED)
        right, tags = template_answers(song), expected_tags(song, prompt_set)
        assert {"mood", "caption"} <= set(tags)
        perfect = score_track(song, right, tags, prompt_set)
        assert set(perfect["scores"].values()) == {1.0} and set(perfect["answer_exact"].values()) == {1.0}
        wrong_key = {**right, "key": {"tonic": "C#" if song.tonic != "C#" else "D", "mode": song.mode}}
        wrong = score_track(song, wrong_key, {**tags, "mood": "wrong", "caption": ""}, prompt_set)["scores"]
        assert wrong["key"] == wrong["mood_tag"] == wrong["caption_tag"] == wrong["caption_key"] == 0.0
        assert wrong["tempo"] == wrong["instruments"] == 1.0
        slower = replace(song, bpm=int(song.bpm * 1.1) + 1)
        assert score_track(slower, right, tags, prompt_set)["scores"]["tempo"] == 0.0


def test_the_library_holds_every_format_with_its_title(tmp_path):
    from gamma_rt.runtime.audio import open_audio

    labels = make_library(tmp_path, len(FORMATS), SEED)
    assert [label["format"] for label in labels] == list(FORMATS)
    for label in labels:
        path = tmp_path / label["file"]
        assert read_title(path) == label["title"]
        assert set(read_tags(path)) == {"genre", "mood", "caption"}  # a container --write-tags writes
        with open_audio(path) as stream:
            seconds = sum(len(block) for block in stream.source_blocks()) / stream.info.sample_rate
        assert seconds == pytest.approx(label["song"]["seconds"], abs=0.1)


def test_help_shows_an_example(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    assert "python -m gamma_rt.bench.tag_accuracy --tracks 20" in capsys.readouterr().out
