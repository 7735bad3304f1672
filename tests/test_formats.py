"""Every common format of a real music library decodes (FFmpeg through PyAV where libsndfile cannot), and
every damaged copy fails with one line naming the file. Files are written by the wheel's own encoders."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
from format_fixtures import FORMATS, MissingCodec, damage, music, write_format, write_video_only

from gamma_rt.errors import AudioError
from gamma_rt.runtime.audio import load_audio, open_audio
from gamma_rt.runtime import mp4_audio
from gamma_rt.runtime.audio_ffmpeg import FFmpegSource, Mp4Source, frame_samples, open_ffmpeg

SECONDS = 2.0
# PCM has no redundancy: noise written over it is valid (louder) audio, so only a cut can be told.
UNDETECTABLE = {("pcm.aiff", "corrupt")}


def _write(tmp_path, key, seconds=SECONDS, seed=0):
    fmt = FORMATS[key]
    try:
        return write_format(tmp_path / f"song{fmt.ext}", fmt, seconds, seed)
    except MissingCodec as missing:
        pytest.skip(f"the av wheel's FFmpeg has no {missing}")


@pytest.mark.parametrize("key", list(FORMATS))
def test_each_format_decodes_its_declared_length_within_the_codec_priming_and_padding(tmp_path, key):
    fmt = FORMATS[key]
    path = _write(tmp_path, key)
    with open_audio(path) as stream:
        info = stream.info
        frames = sum(len(b) for b in stream.source_blocks())
        mono = np.concatenate(list(stream))
    assert (info.sample_rate, info.channels) == (fmt.rate, fmt.channels)
    assert info.duration_s == pytest.approx(SECONDS, abs=0.05)
    assert abs(frames - SECONDS * fmt.rate) <= fmt.slack, f"{frames} frames decoded"
    assert abs(len(mono) - SECONDS * 16000) <= fmt.slack * 16000 / fmt.rate + 1
    assert np.sqrt(np.mean(mono ** 2)) > 0.01, "decoded to silence"


@pytest.mark.parametrize("fmt, subtype", [("WAV", "PCM_16"), ("WAV", "PCM_24"), ("WAV", "FLOAT"),
                                          ("FLAC", "PCM_16"), ("FLAC", "PCM_24")])
def test_ffmpeg_and_libsndfile_decode_the_same_flac_and_wav_to_the_same_samples(tmp_path, fmt, subtype):
    path = tmp_path / f"song.{fmt.lower()}"
    sf.write(path, music(FORMATS["flac.flac"], 1.5), 44100, format=fmt, subtype=subtype)
    expected, _ = sf.read(path, dtype="float32", always_2d=True)
    source = FFmpegSource(str(path), str(path), block_seconds=0.25)
    got = np.concatenate(list(source.blocks()))
    source.close()
    assert got.shape == expected.shape and np.abs(got - expected).max() <= 1e-6


@pytest.mark.parametrize("key", list(FORMATS))
@pytest.mark.parametrize("how", ["truncated", "corrupt"])
def test_a_damaged_copy_of_each_format_fails_with_one_line_naming_the_file(tmp_path, key, how):
    if (key, how) in UNDETECTABLE:
        pytest.skip("noise over PCM samples is valid PCM; nothing in the file says it changed")
    bad = damage(_write(tmp_path, key), how)
    with pytest.raises(AudioError) as err:
        load_audio(bad)
    message = str(err.value)
    assert message.startswith(str(bad)) and "\n" not in message


def test_five_point_one_is_averaged_to_mono_like_every_other_layout(tmp_path):
    fmt = FORMATS["wavpack.wv"].__class__(".wv", "wv", "wavpack", channels=6)
    path = write_format(tmp_path / "surround.wv", fmt, 1.0)  # lossless, float samples kept as they are
    expected = music(fmt, 1.0).mean(axis=1)
    with open_audio(path, target_rate=fmt.rate) as stream:  # the source rate: no resampling
        assert stream.info.channels == 6 and "WAVPACK" in stream.info.format
        got = np.concatenate(list(stream))
    assert got.shape == expected.shape and np.abs(got - expected).max() <= 1e-6


@pytest.mark.parametrize("key", ["alac.m4a", "flac.flac"])
def test_a_clip_is_the_same_samples_as_that_span_of_the_whole_decode(tmp_path, key):
    path = _write(tmp_path, key, seconds=3.0)
    rate = FORMATS[key].rate
    with open_audio(path, target_rate=rate, block_seconds=0.5) as stream:
        whole = np.concatenate(list(stream))
        clip = stream.clip(1.25, 1.0)
        assert clip.info.duration_s == 1.0 and clip.source_info.duration_s == pytest.approx(3.0)
        part = np.concatenate(list(clip))
    start = round(1.25 * rate)
    np.testing.assert_array_equal(part, whole[start:start + rate])


def test_a_video_without_audio_says_so(tmp_path):
    path = write_video_only(tmp_path / "clip.mp4")
    with pytest.raises(AudioError, match="holds a video with no audio track"):
        open_audio(path)


def test_drm_protected_mp4_audio_is_refused_as_such(tmp_path):
    fmt = FORMATS["aac.m4a"].__class__(".m4a", "mp4", "aac", options={
        "encryption_scheme": "cenc-aes-ctr", "encryption_key": "00112233445566778899aabbccddeeff",
        "encryption_kid": "ffeeddccbbaa99887766554433221100"})
    path = write_format(tmp_path / "protected.m4a", fmt, 1.0)
    with pytest.raises(AudioError, match="DRM-protected") as err:
        load_audio(path)
    assert str(err.value).startswith(str(path))


@pytest.mark.parametrize("name", ["empty.m4a", "empty.opus", "empty.wma"])
def test_zero_length_files_of_the_ffmpeg_formats_fail_in_one_line(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"")
    with pytest.raises(AudioError, match="empty file"):
        open_audio(path)


def test_an_m4a_on_stdin_like_stream_is_spooled_and_decoded(tmp_path):
    path = _write(tmp_path, "aac.m4a")
    with open(path, "rb") as f:
        piped = load_audio(_Unseekable(f))
    assert abs(len(piped) - len(load_audio(path))) == 0


class _Unseekable:
    """A file object that cannot seek, as a pipe."""

    def __init__(self, f):
        self._f = f

    def read(self, n=-1):
        return self._f.read(n)

    def seekable(self):
        return False


MP4_KEYS = ["aac.m4a", "aac-faststart.m4a", "alac.m4a", "aac-5.1.m4a", "aac-video.mp4"]


def _ffmpeg_demuxed(path) -> np.ndarray:
    """(frames, channels) as FFmpeg's own mov demuxer and a fresh decoder give them."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        channels = stream.codec_context.channels
        return np.concatenate([frame_samples(frame, channels, str(path))
                               for packet in container.demux(stream) for frame in packet.decode()])


@pytest.mark.parametrize("key", MP4_KEYS)
def test_the_streaming_mp4_reader_gives_ffmpegs_own_samples(tmp_path, key, monkeypatch):
    monkeypatch.setattr(mp4_audio, "WINDOW_ENTRIES", 7)  # the size table is re-read every 7 packets
    fmt = FORMATS[key]
    path = _write(tmp_path, key, seconds=3.0)
    with open(path, "rb") as f:
        assert mp4_audio.read_track(f) is not None, "the plain MP4 went to FFmpeg's demuxer"
    source = open_ffmpeg(str(path), str(path), block_seconds=0.25)
    assert isinstance(source, Mp4Source)
    got = np.concatenate(list(source.blocks()))
    source.close()
    expected = _ffmpeg_demuxed(path)
    # FFmpeg drops the priming as the edit says and keeps the last frame's padding; the edit's end is
    # the encoder's input length, where the reader stops
    assert len(got) == round(3.0 * fmt.rate) == source.info.frames
    assert np.array_equal(got, expected[:len(got)])


def test_mp4_files_the_reader_does_not_take_still_decode_through_ffmpeg(tmp_path):
    fmt = FORMATS["aac.m4a"].__class__(".m4a", "mp4", "aac", options={"movflags": "frag_keyframe+empty_moov"})
    path = write_format(tmp_path / "fragmented.m4a", fmt, 2.0)
    with open(path, "rb") as f:
        assert mp4_audio.read_track(f) is None
    with open_audio(path, target_rate=44100) as stream:
        assert stream.info.format == "AAC in MP4"
        assert abs(sum(len(b) for b in stream.source_blocks()) - 2 * 44100) <= 2048 + 1024


def test_a_cut_inside_the_packets_of_a_front_indexed_m4a_names_what_is_missing(tmp_path):
    path = damage(_write(tmp_path, "aac-faststart.m4a"), "truncated")
    with pytest.raises(AudioError, match=r"truncated or corrupt AAC in MP4: the container promises 2\.00 s, "
                                         r"only 1\.\d+ s could be decoded") as err:
        load_audio(path)
    assert str(err.value).startswith(str(path))


def test_an_aac_clip_starts_where_the_whole_decode_has_that_sample(tmp_path):
    """AAC's overlapped frames and its noise filler make a decode started mid-stream differ slightly from
    the whole decode (FFmpeg's own seek does the same): the clip is aligned, and close."""
    path = _write(tmp_path, "aac-faststart.m4a", seconds=3.0)
    with open_audio(path, target_rate=44100, block_seconds=0.5) as stream:
        whole = np.concatenate(list(stream))
        part = np.concatenate(list(stream.clip(1.25, 1.0)))
    start = round(1.25 * 44100)
    assert len(part) == 44100
    error = np.sqrt(np.mean((part - whole[start:start + 44100]) ** 2))
    assert error < 0.05 * np.sqrt(np.mean(part ** 2)), error


@pytest.mark.parametrize("key", ["aac-faststart.m4a", "alac.m4a"])
def test_random_damage_to_an_mp4_index_gives_audio_or_one_line_never_another_error(tmp_path, key):
    """Bytes of the moov (the sample tables the streaming reader trusts) overwritten at random: every copy
    decodes or fails with one AudioError line. Found a damaged fourcc that PyAV could not read as text."""
    data = _write(tmp_path, key, seconds=1.0).read_bytes()
    moov = data.find(b"moov") - 4
    rng = np.random.default_rng(3)
    for i in range(40):
        copy = bytearray(data)
        for pos in rng.integers(moov, min(len(data), moov + 2000), size=rng.integers(1, 7)):
            copy[pos] = rng.integers(0, 256)
        path = tmp_path / f"damaged{i}.m4a"
        path.write_bytes(bytes(copy))
        try:
            load_audio(path)
        except AudioError as err:
            assert str(err).startswith(str(path)) and "\n" not in str(err)


_DECODE_EACH = r"""
import sys
from gamma_rt.errors import AudioError
from gamma_rt.runtime.audio import load_audio
for path in sys.argv[1:]:
    try:
        load_audio(path)
    except AudioError as err:
        assert str(err).startswith(path) and "\n" not in str(err), str(err)
"""


def test_random_damage_anywhere_in_a_surround_m4a_never_crashes_the_process(tmp_path):
    """Damaged AAC 5.1 packets can decode to a frame whose layout claims more channels than it has planes;
    PyAV's to_ndarray then read past them and the process died (a segfault: in `gamma-rt tag` the whole run).
    Copy 18 of this seed did that before frames were checked. In a child process, so a crash is a failure."""
    data = _write(tmp_path, "aac-5.1.m4a", seconds=1.0).read_bytes()
    rng = np.random.default_rng(0)
    paths = []
    for i in range(24):
        copy = bytearray(data)
        for pos in rng.integers(0, len(data), size=rng.integers(1, 9)):
            copy[pos] = rng.integers(0, 256)
        paths.append(tmp_path / f"damaged{i}.m4a")
        paths[-1].write_bytes(bytes(copy))
    child = subprocess.run([sys.executable, "-c", _DECODE_EACH, *map(str, paths)], capture_output=True, text=True)
    assert child.returncode == 0, f"exit {child.returncode}: {child.stderr[-500:]}"
