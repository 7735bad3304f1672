"""--write-tags on every format mutagen can tag, each file written by FFmpeg's own encoders: the tags
round-trip through mutagen, and the audio packets and decoded samples are unchanged."""

from __future__ import annotations

import mutagen
import pytest
from format_fixtures import FORMATS, MissingCodec, write_format

from gamma_rt.runtime.tagging.file_tags import TagsUnsupported, packet_digest, read_tags, same_samples, write_tags

VALUES = {"genre": "Jazz fusion", "mood": "calm; dark", "caption": "A quiet tune with ünïcode — and a dash"}
TAGGABLE = [k for k, f in FORMATS.items() if f.tags]
UNTAGGABLE = [k for k, f in FORMATS.items() if not f.tags]


def _write(tmp_path, key):
    fmt = FORMATS[key]
    try:
        return write_format(tmp_path / f"song{fmt.ext}", fmt, 1.0)
    except MissingCodec as missing:
        pytest.skip(f"the av wheel's FFmpeg has no {missing}")


@pytest.mark.parametrize("key", TAGGABLE)
def test_tags_round_trip_and_the_audio_packets_are_byte_identical(tmp_path, key):
    path = _write(tmp_path, key)
    original = tmp_path / f"original{path.suffix}"
    original.write_bytes(path.read_bytes())
    packets = packet_digest(path)
    assert packets is not None
    assert {f for f, _, _ in write_tags(path, VALUES)} == set(VALUES)
    assert type(mutagen.File(path)).__name__ == FORMATS[key].tags
    assert read_tags(path) == VALUES
    assert packet_digest(path) == packets and same_samples(original, path)
    assert path.read_bytes() != original.read_bytes(), "the tags went into the file"
    assert write_tags(path, VALUES) == []


@pytest.mark.parametrize("key", UNTAGGABLE)
def test_a_format_mutagen_cannot_tag_is_a_clear_message_and_the_file_is_untouched(tmp_path, key):
    path = _write(tmp_path, key)
    before = path.read_bytes()
    with pytest.raises(TagsUnsupported, match=str(path)):
        write_tags(path, VALUES)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_gamma_rt_tag_gives_an_ok_record_per_good_file_and_a_one_line_failure_per_damaged_copy(tmp_path, tiny_bundle):
    from format_fixtures import damage
    from test_tag_run import SMALL_PROMPTS

    from gamma_rt.cli import main
    from gamma_rt.runtime.tagging.records import read_records

    lib = tmp_path / "lib"
    good, bad = [], []
    for key, fmt in FORMATS.items():
        try:
            path = write_format(lib / key.replace(".", "_") / f"song{fmt.ext}", fmt, 1.0)
        except MissingCodec:
            continue
        good.append(str(path.resolve()))
        for how in ("truncated", "corrupt"):
            if (key, how) != ("pcm.aiff", "corrupt"):  # noise over PCM is valid PCM (see test_formats.py)
                bad.append(str(damage(path, how).resolve()))
    prompts = tmp_path / "small.toml"
    prompts.write_text(SMALL_PROMPTS)
    argv = ["tag", str(lib), "--bundle", str(tiny_bundle), "--out", str(tmp_path / "out"), "--prompts", str(prompts),
            "--quiet", "--threads", "1"]
    assert main(argv) == 1
    records = {r["path"]: r for r in read_records(tmp_path / "out" / "records.jsonl", "jsonl")}
    assert sorted(records) == sorted(good + bad)
    for path in good:
        assert records[path]["status"] == "ok", records[path]["error"]
        assert records[path]["duration_s"] == pytest.approx(1.0, abs=0.1)  # an MP3 without Xing: estimated
    for path in bad:
        error = records[path]["error"]
        assert records[path]["status"] == "failed" and path in error and "\n" not in error
