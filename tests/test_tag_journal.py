"""The library walker, the journal and the result files, on their own (no model)."""

from __future__ import annotations

import os
import sqlite3

import pytest
from tag_fixtures import BAD, GOOD, make_library

from gamma_rt.errors import GammaError
from gamma_rt.runtime.tagging.journal import Journal
from gamma_rt.runtime.tagging.library import Track, walk
from gamma_rt.runtime.tagging.records import FORMATS, RecordFile, read_records, results_path


def _record(track: Track, status="ok", bundle="b1", prompts="p1") -> dict:
    return {"path": track.path, "size": track.size, "mtime_ns": track.mtime_ns,
            "content_sha256": track.content_sha256(), "duration_s": 1.0, "status": status,
            "error": None if status == "ok" else "AudioError: bad", "answers": {"genre": {"genre": "jazz"}},
            "timings": {"total_s": 0.1}, "bundle_hash": bundle, "prompt_set_hash": prompts}


def test_walker_finds_every_audio_file_recursively_in_a_stable_order_and_skips_the_rest(tmp_path):
    make_library(tmp_path)
    found = [os.path.relpath(t.path, tmp_path) for t in walk(tmp_path)]
    assert sorted(found) == sorted([*GOOD, *BAD])
    assert found == [os.path.relpath(t.path, tmp_path) for t in walk(tmp_path)]
    with pytest.raises(GammaError, match="library folder not found"):
        list(walk(tmp_path / "nope"))


def test_journal_marks_done_per_bundle_and_prompt_set_and_survives_reopening(tmp_path):
    make_library(tmp_path / "lib", bad=False)
    tracks = list(walk(tmp_path / "lib"))
    with Journal(tmp_path / "j.sqlite") as j:
        assert j.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert j.commit(_record(tracks[0]))
        assert not j.commit(_record(tracks[0])), "the same result is merged once"
    with Journal(tmp_path / "j.sqlite") as j:
        assert j.is_done(tracks[0], "b1", "p1")
        assert not j.is_done(tracks[0], "b1", "p2") and not j.is_done(tracks[0], "b2", "p1")
        assert not j.is_done(tracks[1], "b1", "p1")
        assert j.counts("b1", "p1") == {"ok": 1, "failed": 0}
        assert [r["path"] for r in j.records("b1", "p1")] == [tracks[0].path]


def test_touched_file_stays_done_but_a_changed_file_is_asked_again(tmp_path):
    make_library(tmp_path / "lib", bad=False)
    track = next(iter(walk(tmp_path / "lib")))
    with Journal(tmp_path / "j.sqlite") as j:
        j.commit(_record(track))
        os.utime(track.path, ns=(track.mtime_ns + 10**9, track.mtime_ns + 10**9))
        assert j.is_done(Track.stat(track.path), "b1", "p1")
        with open(track.path, "ab") as f:
            f.write(b"\0")
        assert not j.is_done(Track.stat(track.path), "b1", "p1")


def test_failed_track_is_retried_only_when_asked_and_an_ok_retry_replaces_it(tmp_path):
    make_library(tmp_path / "lib", bad=False)
    track = next(iter(walk(tmp_path / "lib")))
    with Journal(tmp_path / "j.sqlite") as j:
        j.commit(_record(track, "failed"))
        assert j.is_done(track, "b1", "p1") and not j.is_done(track, "b1", "p1", retry_failed=True)
        assert j.commit(_record(track, "ok"))
        assert j.counts("b1", "p1") == {"ok": 1, "failed": 0}


@pytest.mark.parametrize("fmt", FORMATS)
def test_result_file_rebuilt_from_the_journal_repairs_a_torn_append(tmp_path, fmt):
    make_library(tmp_path / "lib", bad=False)
    tracks = list(walk(tmp_path / "lib"))
    out = RecordFile(results_path(tmp_path, fmt), fmt, ["genre"])
    with Journal(tmp_path / "j.sqlite") as j:
        for t in tracks[:2]:
            j.commit(_record(t))
        out.rebuild(j.records("b1", "p1"))
        out.append(_record(tracks[1]))  # a record appended twice (killed before the journal saw it done)
        if fmt != "sqlite":
            with open(out.path, "a") as f:
                f.write('{"path": "/half')  # and a torn last line
        assert out.rebuild(j.records("b1", "p1")) == 2
    rows = read_records(out.path, fmt)
    assert sorted(r["path"] for r in rows) == sorted(t.path for t in tracks[:2])
    assert all(r["status"] == "ok" for r in rows)
    if fmt == "sqlite":
        db = sqlite3.connect(out.path)
        assert db.execute("SELECT json_extract(answer_genre, '$.genre') FROM records").fetchone() == ("jazz",)
