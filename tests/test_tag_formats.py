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
