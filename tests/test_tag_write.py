"""--write-tags: genre, mood and caption round-trip through mutagen; the audio is never touched."""

from __future__ import annotations

import hashlib

import mutagen
import numpy as np
import pytest
import soundfile as sf
from tag_fixtures import GOOD, write_good

from gamma_rt.errors import TagWriteError
from gamma_rt.runtime.tagging import file_tags
from gamma_rt.runtime.tagging.file_tags import audio_payload, plan, read_tags, write_tags

VALUES = {"genre": "Jazz fusion", "mood": "calm; dark", "caption": "A quiet tune with ünïcode — and a dash"}


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("rel", list(GOOD))
def test_tags_round_trip_through_mutagen_and_decoded_audio_is_unchanged(tmp_path, rel):
    path = write_good(tmp_path, rel)
    before, sr = sf.read(path, dtype="float32")
    changes = write_tags(path, VALUES)
    assert {f for f, _, _ in changes} == set(VALUES)
    assert read_tags(path) == VALUES
    assert mutagen.File(path) is not None
    after, sr2 = sf.read(path, dtype="float32")
    assert sr2 == sr and np.array_equal(before, after)
    assert write_tags(path, VALUES) == [], "writing the same tags again changes nothing"
    assert [p.name for p in path.parent.iterdir() if "gamma-rt-tmp" in p.name] == []


def test_a_file_whose_name_is_at_the_255_byte_limit_is_tagged(tmp_path):
    path = write_good(tmp_path, "rock/live/encore.flac").rename(tmp_path / ("x" * 250 + ".flac"))
    assert {f for f, _, _ in write_tags(path, VALUES)} == set(VALUES)
    assert read_tags(path) == VALUES
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == [path.name], "no temporary left"


@pytest.mark.parametrize("rel", ["rock/live/encore.flac", "jazz/solo.mp3"])
def test_flac_and_mp3_audio_frames_are_byte_identical_after_tagging(tmp_path, rel):
    path = write_good(tmp_path, rel)
    frames = audio_payload(path)
    write_tags(path, VALUES)
    assert len(frames) > 1000 and audio_payload(path) == frames


def test_dry_run_plan_shows_the_diff_and_changes_nothing(tmp_path):
    path = write_good(tmp_path, "rock/live/encore.flac")
    write_tags(path, {"genre": "Rock"})
    digest, mtime = _digest(path), path.stat().st_mtime_ns
    changes = plan(path, VALUES)
    assert ("genre", "Rock", "Jazz fusion") in changes and ("mood", None, "calm; dark") in changes
    assert _digest(path) == digest and path.stat().st_mtime_ns == mtime


def test_a_write_that_fails_verification_leaves_the_original_file_byte_identical(tmp_path, monkeypatch):
    path = write_good(tmp_path, "jazz/solo.mp3")
    digest = _digest(path)

    def corrupting_save(original, copy, changes):  # as if the tag writer had damaged the audio
        data = bytearray(copy.read_bytes())
        data[-10] ^= 0xFF
        copy.write_bytes(bytes(data))
        return real_verify(original, copy, changes)

    real_verify = file_tags._verify
    monkeypatch.setattr(file_tags, "_verify", corrupting_save)
    with pytest.raises(TagWriteError, match="changed the audio"):
        write_tags(path, VALUES)
    assert _digest(path) == digest
    assert sorted(p.name for p in path.parent.iterdir()) == ["solo.mp3"]


def test_file_mutagen_cannot_read_raises_tag_write_error(tmp_path):
    path = tmp_path / "notes.wav"
    path.write_text("not audio")
    with pytest.raises(TagWriteError, match="notes.wav"):
        write_tags(path, VALUES)
