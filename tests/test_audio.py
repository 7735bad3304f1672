"""Audio in: real files written with soundfile, decoded in blocks to float32 mono 16 kHz."""

import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import soundfile as sf
import soxr

from gamma_rt.errors import AudioError
from gamma_rt.runtime.audio import AudioStream, RawFormat, load_audio, open_audio
from gamma_rt.synth import Music, synthesize

RATE = 16000
LIBSNDFILE_WRITES_MP3 = "MP3" in sf.available_formats()


def _music(seconds: float, rate: int, channels: int = 1) -> np.ndarray:
    """(frames, channels) float32; the channels differ, so a mixdown is visible."""
    return synthesize(Music(seconds, rate, channels))


def _write(path, audio, rate, **kw):
    sf.write(path, audio, rate, **kw)
    return path


def _one_line_naming(err: pytest.ExceptionInfo, path) -> str:
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    return message


@pytest.mark.parametrize("fmt", ["WAV", "FLAC", "OGG"] + (["MP3"] if LIBSNDFILE_WRITES_MP3 else []))
def test_each_format_decodes_to_what_libsndfile_reads(tmp_path, fmt):
    path = _write(tmp_path / f"clip.{fmt.lower()}", _music(2.0, RATE), RATE, format=fmt)
    stream = open_audio(path)
    assert (stream.info.sample_rate, stream.info.channels, stream.info.format) == (RATE, 1, fmt)
    assert stream.info.duration_s == pytest.approx(2.0, abs=0.05)
    audio = load_audio(path)
    reference, _ = sf.read(path, dtype="float32")
    assert audio.dtype == np.float32 and audio.ndim == 1
    np.testing.assert_array_equal(audio, reference)


@pytest.mark.parametrize("rate", [44100, 48000, 96000, 8000])
def test_streamed_resampling_equals_whole_file_resampling(tmp_path, rate):
    source = _music(3.3, rate)[:, 0]
    path = _write(tmp_path / "clip.wav", source, rate, subtype="FLOAT")
    blocks = list(open_audio(path, block_seconds=0.37))
    assert len(blocks) > 5
    streamed = np.concatenate(blocks)
    whole = soxr.resample(source, rate, RATE, quality="HQ")
    assert len(streamed) == len(whole) == round(len(source) * RATE / rate)
    np.testing.assert_allclose(streamed, whole, rtol=0, atol=1e-6)


def test_resampled_tone_keeps_its_pitch(tmp_path):
    t = np.arange(48000 * 2) / 48000
    path = _write(tmp_path / "tone.flac", 0.5 * np.sin(2 * np.pi * 1000 * t), 48000)
    audio = load_audio(path)
    spectrum = np.abs(np.fft.rfft(audio))
    assert np.argmax(spectrum) * RATE / len(audio) == pytest.approx(1000, abs=1)


@pytest.mark.parametrize("channels, rate", [(2, 44100), (8, 96000)])
def test_any_channel_count_is_mixed_down_to_mono(tmp_path, channels, rate):
    source = _music(1.5, rate, channels)
    path = _write(tmp_path / "multi.wav", source, rate, subtype="FLOAT")
    stream = open_audio(path)
    assert (stream.info.channels, stream.info.sample_rate) == (channels, rate)
    audio = np.concatenate(list(stream))
    expected = soxr.resample(source.mean(axis=1), rate, RATE, quality="HQ")
    assert audio.shape == (int(1.5 * RATE),)
    np.testing.assert_allclose(audio, expected, rtol=0, atol=1e-6)


def test_blocks_are_bounded_by_block_seconds(tmp_path):
    path = _write(tmp_path / "long.flac", _music(25.0, 22050), 22050)
    sizes = [len(b) for b in open_audio(path, block_seconds=10.0)]
    assert max(sizes) <= 10 * RATE + 64 and sum(sizes) == 25 * RATE


def test_a_file_stream_can_be_iterated_twice(tmp_path):
    stream = open_audio(_write(tmp_path / "a.ogg", _music(1.0, 44100), 44100))
    np.testing.assert_array_equal(np.concatenate(list(stream)), np.concatenate(list(stream)))


def test_one_sample_audio_is_accepted_as_one_sample(tmp_path):
    for rate in (16000, 96000):
        path = _write(tmp_path / f"one_{rate}.wav", np.array([0.25], np.float32), rate, subtype="FLOAT")
        audio = load_audio(path)
        assert audio.shape == (1,) and audio[0] == pytest.approx(0.25, abs=1e-6)


# --- live input: stdin and pipes -------------------------------------------------------------------

def _wav_bytes(audio: np.ndarray, rate: int, subtype: str = "PCM_16") -> bytes:
    import io

    buf = io.BytesIO()
    sf.write(buf, audio, rate, format="WAV", subtype=subtype)
    return buf.getvalue()


def test_pipe_yields_blocks_before_the_writer_closes(tmp_path):
    payload = _wav_bytes(_music(4.0, 44100), 44100)
    first_part = 44 + 2 * 44100  # header and one second of 16-bit mono
    reader_has_audio, writer_closed = threading.Event(), threading.Event()
    read_fd, write_fd = os.pipe()

    def slow_writer():
        os.write(write_fd, payload[:first_part])
        reader_has_audio.wait(timeout=20)  # hold the rest back until the reader has produced audio
        os.write(write_fd, payload[first_part:])
        os.close(write_fd)
        writer_closed.set()

    writer = threading.Thread(target=slow_writer)
    writer.start()
    blocks, first_block_before_close = [], None
    with os.fdopen(read_fd, "rb") as pipe:
        stream = open_audio(pipe)
        assert stream.info.format == "WAV" and stream.info.frames == 4 * 44100
        for block in stream:
            if not blocks:
                first_block_before_close = not writer_closed.is_set()
                reader_has_audio.set()
            blocks.append(block)
    writer.join()
    assert first_block_before_close is True
    from_file = load_audio(_write(tmp_path / "same.wav", _music(4.0, 44100), 44100))
    np.testing.assert_array_equal(np.concatenate(blocks), from_file)


def test_raw_pcm_on_a_pipe_equals_the_same_samples_in_a_wav(tmp_path):
    stereo = _music(2.0, 48000, channels=2)
    pcm = (np.clip(stereo, -1, 1) * 32767).astype("<i2").tobytes()
    read_fd, write_fd = os.pipe()
    threading.Thread(target=lambda: (os.write(write_fd, pcm), os.close(write_fd))).start()
    with os.fdopen(read_fd, "rb") as pipe:
        raw = load_audio(pipe, raw=RawFormat("s16le", 48000, 2))
    wav = tmp_path / "same.wav"
    sf.write(wav, (np.clip(stereo, -1, 1) * 32767).astype(np.int16), 48000)
    np.testing.assert_array_equal(raw, load_audio(wav))


def test_dash_reads_stdin_wav_and_raw(tmp_path):
    audio = _music(1.0, 16000)
    script = ("import sys; from gamma_rt.runtime.audio import load_audio, RawFormat;"
              "raw = RawFormat('f32le', 16000, 1) if len(sys.argv) > 1 else None;"
              "x = load_audio('-', raw=raw); print(len(x), float(x.sum()))")
    for args, payload in [([], _wav_bytes(audio, 16000, "FLOAT")), (["raw"], audio.astype("<f4").tobytes())]:
        out = subprocess.run([sys.executable, "-c", script, *args], input=payload, capture_output=True, check=True)
        n, total = out.stdout.split()
        assert int(n) == 16000 and float(total) == pytest.approx(float(audio.sum()), abs=1e-3)


def test_non_wav_on_a_pipe_is_spooled_and_decoded(tmp_path):
    path = _write(tmp_path / "clip.flac", _music(1.0, 44100), 44100)
    read_fd, write_fd = os.pipe()
    data = path.read_bytes()
    threading.Thread(target=lambda: (os.write(write_fd, data), os.close(write_fd))).start()
    with os.fdopen(read_fd, "rb") as pipe:
        np.testing.assert_array_equal(load_audio(pipe), load_audio(path))


# --- bad input: one clear line naming the file ---------------------------------------------------

def test_missing_file(tmp_path):
    with pytest.raises(AudioError) as err:
        open_audio(tmp_path / "nope.flac")
    assert "no such" in _one_line_naming(err, tmp_path / "nope.flac")


def test_empty_file(tmp_path):
    (tmp_path / "empty.wav").write_bytes(b"")
    with pytest.raises(AudioError) as err:
        open_audio(tmp_path / "empty.wav")
    assert "empty" in _one_line_naming(err, tmp_path / "empty.wav")


def test_zero_length_wav(tmp_path):
    path = _write(tmp_path / "zero.wav", np.zeros((0, 1), np.float32), RATE)
    with pytest.raises(AudioError) as err:
        open_audio(path)
    assert "0 frames" in _one_line_naming(err, path)


def test_text_file_named_wav(tmp_path):
    path = tmp_path / "notes.wav"
    path.write_text("this is a shopping list, not audio\n")
    with pytest.raises(AudioError) as err:
        open_audio(path)
    assert "not a WAV file" in _one_line_naming(err, path)


def _damaged(tmp_path, fmt: str, how: str):
    good = _write(tmp_path / f"good.{fmt.lower()}", _music(6.0, 44100), 44100, format=fmt)
    data = bytearray(good.read_bytes())
    if how == "truncated":
        data = data[: len(data) // 2]
    else:  # overwrite 2 kB of the middle with noise
        mid = len(data) // 3
        data[mid:mid + 2000] = np.random.default_rng(0).integers(0, 256, 2000, dtype=np.uint8).tobytes()
    path = tmp_path / f"{how}.{fmt.lower()}"
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("fmt", ["FLAC"] + (["MP3"] if LIBSNDFILE_WRITES_MP3 else []))
@pytest.mark.parametrize("how", ["truncated", "corrupt"])
def test_truncated_or_corrupt_compressed_file(tmp_path, fmt, how):
    path = _damaged(tmp_path, fmt, how)
    with pytest.raises(AudioError) as err:
        load_audio(path)
    assert ("truncated" in str(err.value) or "corrupt" in str(err.value))
    _one_line_naming(err, path)


def test_random_bytes_named_mp3(tmp_path):
    path = tmp_path / "noise.mp3"
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(AudioError) as err:
        load_audio(path)
    assert "not a decodable audio file" in _one_line_naming(err, path)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_samples_name_the_second(tmp_path, bad):
    audio = _music(4.0, 22050, channels=2)
    audio[int(2.5 * 22050), 1] = bad
    path = _write(tmp_path / "bad.wav", audio, 22050, subtype="FLOAT")
    with pytest.raises(AudioError) as err:
        load_audio(path)
    assert "at 2.500 s, channel 1" in _one_line_naming(err, path)


def test_truncated_wav_stream_on_a_pipe():
    payload = _wav_bytes(_music(2.0, 16000), 16000)
    read_fd, write_fd = os.pipe()
    threading.Thread(target=lambda: (os.write(write_fd, payload[: len(payload) // 2]), os.close(write_fd))).start()
    with os.fdopen(read_fd, "rb") as pipe, pytest.raises(AudioError, match="truncated WAV stream"):
        load_audio(pipe)


def test_unknown_raw_encoding_is_a_user_error():
    with pytest.raises(AudioError, match="unknown encoding 's17le'"):
        RawFormat("s17le", 16000, 1)


def test_audio_modules_import_no_torch():
    code = ("import sys; import gamma_rt.runtime.audio, gamma_rt.runtime.mel, gamma_rt.runtime.windows;"
            "bad = [m for m in ('torch', 'transformers', 'gamma_rt.export') if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_stream_is_a_context_manager(tmp_path):
    path = _write(tmp_path / "a.wav", _music(0.5, RATE), RATE)
    with open_audio(path) as stream:
        assert isinstance(stream, AudioStream)
        assert sum(len(b) for b in stream) == RATE // 2


def test_raw_format_cli_options_build_the_layout():
    import argparse

    from gamma_rt.runtime.pcm_stream import add_raw_format_options, raw_format_from_options

    parser = argparse.ArgumentParser()
    add_raw_format_options(parser)
    options = parser.parse_args(["--raw-format", "s24le", "--raw-rate", "48000", "--raw-channels", "2"])
    assert raw_format_from_options(options) == RawFormat("s24le", 48000, 2)
    assert raw_format_from_options(parser.parse_args([])) is None


@pytest.mark.slow
def test_long_file_streams_in_bounded_memory(tmp_path):
    """20 minutes through audio -> windows -> log-mel peaks within 32 MiB of 1 minute (bench/ runs 3 h)."""
    from gamma_rt.bench.memory_long_audio import measure

    result = measure(hours=1 / 3, short_minutes=1, rate=RATE, channels=1, workdir=tmp_path)
    assert result["long"]["windows"] == 40 and result["short"]["windows"] == 2
    assert result["long"]["peak_rss_mib"] - result["short"]["peak_rss_mib"] < 32


def test_raw_pcm_file_path_is_read_with_the_given_layout(tmp_path):
    samples = (_music(1.0, 8000)[:, 0] * 32767).astype("<i2")
    path = tmp_path / "voice.pcm"
    path.write_bytes(samples.tobytes())
    audio = load_audio(path, raw=RawFormat("s16le", 8000, 1))
    expected = soxr.resample(samples.astype(np.float32) / 32768, 8000, RATE, quality="HQ")
    np.testing.assert_allclose(audio, expected, rtol=0, atol=1e-6)
