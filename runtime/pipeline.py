"""Ask a bundle about a song: the public API of the runtime.

    from gamma_rt.runtime.pipeline import Pipeline
    with Pipeline.open("bundle") as pipe:
        answers = pipe.ask("song.flac", ["What genre is this?", "What is the tempo?"])
        for piece in pipe.stream("song.flac", "Describe it."):
            print(piece, end="")

How a run goes (one code path for files, arrays and live streams; a whole file is a stream run to the end):

1. the decoder evaluates the prompt head (system turn, user header, audio_start) on sequence 0;
2. each 30 s window, as soon as its audio has arrived, goes through the front end and the audio backend
   (on a worker thread, one window ahead) and its embeddings are prefilled on sequence 0 right away,
   with the manifest's time marker before every window but the first;
3. at the end of the audio only the question remains: its tokens and the answer. So the time from the
   end of the audio to the first token does not grow with the song's length;
4. several questions fork sequence 0 (the audio is not evaluated again) and decode as parallel sequences.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator, Sequence

import numpy as np

from gamma_rt.errors import AudioError, BundleError
from gamma_rt.manifest import Manifest

from .audio import AudioStream, open_audio
from .backends import AudioBackend, open_backend
from .decoder import ALL_LAYERS, DecoderSession, Sampling, context_size_for
from .embed import AudioLayout, WindowEmbedding, embed_windows
from .embed_cache import EmbeddingCache
from .prompt import ChatPrompt
from .timings import StageTimes

AudioSource = "str | Path | BinaryIO | AudioStream | np.ndarray"
PROMPT_SLACK_TOKENS = 256  # the prompt head, the question and follow-up turns, besides the audio and the answer
MARKER_TOKENS = 16  # a time marker's tokens, at most (context sizing only)
DEFAULT_AUDIO_SECONDS = 300  # context reserved when the audio's length is unknown (a live stream)


@dataclass
class Answer:
    question: str
    text: str


@dataclass
class AudioPrefix:
    """What sequence 0 holds after the audio: ``n_tokens`` positions, ``windows`` windows.

    audio_end_s: perf_counter() when the last window was prefilled (the end of the audio, as a user sees it)."""

    n_tokens: int
    windows: int
    audio_end_s: float


class Pipeline:
    """An opened bundle: the audio backend, one decoder context, the prompt format, an optional cache."""

    def __init__(self, bundle: Path, manifest: Manifest, backend: AudioBackend, decoder_file: Path,
                 cache: EmbeddingCache | None = None, threads: int | None = None, overlap: bool = True,
                 progress=None, gpu_layers: int | None = None):
        self.bundle, self.manifest, self.backend = bundle, manifest, backend
        self.layout = AudioLayout.from_manifest(manifest.audio)
        self.prompt = ChatPrompt.from_manifest(manifest.prompt, str(bundle / "manifest.json"))
        self.decoder_file, self.threads, self.overlap, self.progress = decoder_file, threads, overlap, progress
        self.cache, self.gpu_layers = cache, gpu_layers
        self.times = StageTimes()  # of the last run; the backend's stages are merged in at its end
        self.figures: dict[str, float] = {}  # key figures of the last run in ms (after_audio_ms, ...)
        self.session: DecoderSession | None = None
        self._open_decoder(self._context_for(DEFAULT_AUDIO_SECONDS, 512))

    @classmethod
    def open(cls, bundle: str | Path, backend: str = "auto", decoder: str = "decoder", precision: str = "auto",
             cache_dir: str | Path | None = None, threads: int | None = None, overlap: bool = True,
             verify: bool = True, progress=None, gpu_layers: int | None = None) -> "Pipeline":
        """Load a bundle. ``backend``: auto | ort-cpu | ort-cuda | ort-trt | tensorrt. ``decoder``: the manifest
        component of the GGUF (``decoder``, ``decoder.f16``, ``decoder.q4_k_m``...). ``cache_dir``: keep audio
        embeddings there. ``verify`` checks every file's sha256 first (cached, so cheap after the first time).
        ``gpu_layers``: decoder layers offloaded to the GPU (None = all, on a llama.cpp built with CUDA; 0 = CPU)."""
        bundle = Path(bundle)
        manifest = Manifest.load(bundle, verify=verify)
        gguf = manifest.component(decoder)
        if gguf.kind != "gguf":
            raise BundleError(f"{bundle / 'manifest.json'}: components.{decoder}.kind is {gguf.kind!r}, not gguf")
        audio_backend = open_backend(bundle, manifest, backend, precision, threads)
        cache = EmbeddingCache(cache_dir, bundle, audio_backend.precision) if cache_dir else None
        return cls(bundle, manifest, audio_backend, bundle / gguf.file, cache, threads, overlap, progress, gpu_layers)

    def close(self) -> None:
        if self.session is not None:
            self.session.close()
            self.session = None
        self.backend.close()

    def __enter__(self) -> "Pipeline":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- audio side -------------------------------------------------------------------------------

    def embed(self, audio: AudioSource) -> Iterator[WindowEmbedding]:
        """The song's WindowEmbeddings, each as soon as its window is encoded (padding tokens dropped)."""
        blocks, _ = self._blocks(audio)
        yield from embed_windows(blocks, self.backend, self.layout, self.times, self.cache, self.overlap)

    def _blocks(self, audio: AudioSource) -> tuple[object, float | None]:
        """(iterable of 1-D float32 blocks at the bundle's rate, duration in s or None when unknown)."""
        rate = self.layout.sample_rate
        if isinstance(audio, np.ndarray):
            samples = audio
            if samples.ndim != 1 or samples.size == 0:
                raise AudioError(f"audio array of shape {samples.shape}: expected (samples,) mono at {rate} Hz")
            if not np.all(np.isfinite(samples)):
                raise AudioError("audio array: holds NaN or Inf samples")
            block = int(10 * rate)
            return [samples[i:i + block] for i in range(0, samples.size, block)], samples.size / rate
        stream = audio if isinstance(audio, AudioStream) else open_audio(audio, rate)
        return stream, stream.info.duration_s

    # --- decoder ----------------------------------------------------------------------------------

    def _context_for(self, audio_seconds: float, answer_tokens: int) -> int:
        windows = math.ceil(audio_seconds / self.layout.window_seconds)
        tps = self.layout.tokens_per_window / self.layout.window_seconds
        return context_size_for(audio_seconds, tps, PROMPT_SLACK_TOKENS + windows * MARKER_TOKENS, answer_tokens)

    def _open_decoder(self, n_ctx: int) -> None:
        if self.session is not None and self.session.n_ctx >= n_ctx:
            return
        if self.session is not None:
            self.session.close()
        self.session = DecoderSession(self.decoder_file, n_ctx=n_ctx, n_threads=self.threads,
                                      n_gpu_layers=self.gpu_layers)

    def decoder_placement(self) -> str:
        """Where the decoder runs, in words (for --verbose)."""
        layers = self.session.gpu_layers
        if layers == 0:
            why = "--gpu-layers 0" if self.gpu_layers == 0 else "this llama.cpp build has no GPU offload"
            return f"{self.decoder_file.name} on the CPU ({why})"
        return f"{self.decoder_file.name}, {'all' if layers >= ALL_LAYERS else layers} layers on the GPU"

    def tokens(self, text: str) -> list[int]:
        return self.session.tokenize(text) if text else []

    def prefill(self, audio: AudioSource, answer_tokens: int = 512) -> AudioPrefix:
        """Evaluate the prompt head and the song's audio on sequence 0 (everything before the question).

        ``answer_tokens``: context to keep free after the audio for questions and answers (all sequences)."""
        self.times.reset()
        self.backend.times.reset()
        self.figures = {}
        blocks, duration = self._blocks(audio)
        self._open_decoder(self._context_for(duration or DEFAULT_AUDIO_SECONDS, answer_tokens))
        s = self.session
        s.clear()
        with self.times.stage("prefill"):
            s.eval_tokens(self.tokens(self.prompt.head()))
        n_windows = 0
        embeddings = embed_windows(blocks, self.backend, self.layout, self.times, self.cache, self.overlap)
        if self.progress is not None and duration:
            total = math.ceil(duration / self.layout.window_seconds)
            embeddings = self.progress(embeddings, description="listening", total=total)
        for window in embeddings:
            with self.times.stage("prefill"):
                marker = self.prompt.marker(window.index, window.start_s)
                if marker:
                    s.eval_tokens(self.tokens(marker))
                s.eval_embeddings(window.embeddings)
            n_windows += 1
        return AudioPrefix(s.n_past(0), n_windows, time.perf_counter())

    def figures_ms(self) -> dict[str, float]:
        """The last run's key times in ms: after_audio_ms (end of audio to answers done), ..."""
        return {k: v for k, v in self.figures.items() if k.endswith("_ms")}

    def _finish(self, prefix: AudioPrefix) -> None:
        self.times.merge(self.backend.times)
        self.figures["after_audio_ms"] = (time.perf_counter() - prefix.audio_end_s) * 1e3
        self.figures["audio_tokens"] = float(prefix.n_tokens)

    # --- questions --------------------------------------------------------------------------------

    def ask(self, audio: AudioSource, questions: str | Sequence[str],
            sampling: Sampling | Sequence[Sampling] | None = None,
            max_tokens: int | Sequence[int] = 256) -> list[Answer]:
        """Answers to ``questions`` about one song: one encode, one audio prefill, the questions decoded
        as parallel sequences forked from it. ``sampling``/``max_tokens``: one for all, or one per question
        (questions with equal settings decode in one batch)."""
        questions = [questions] if isinstance(questions, str) else list(questions)
        samplings = _per_question(sampling if sampling is not None else Sampling(), len(questions), "sampling")
        limits = _per_question(max_tokens, len(questions), "max_tokens")
        q_tokens = [self.tokens(self.prompt.tail(q)) for q in questions]
        reserve = sum(len(t) + n for t, n in zip(q_tokens, limits))
        prefix = self.prefill(audio, reserve)
        texts = [""] * len(questions)
        s = self.session
        lanes = s.n_seq_max - 1  # sequence 0 keeps the audio prefix
        groups: dict[tuple, list[int]] = {}
        for i, (samp, limit) in enumerate(zip(samplings, limits)):
            groups.setdefault((repr(samp), limit), []).append(i)
        for members in groups.values():
            for start in range(0, len(members), lanes):
                batch = members[start:start + lanes]
                prompts = {}
                with self.times.stage("question"):
                    for lane, i in enumerate(batch, start=1):
                        s.fork(0, lane)
                        s.eval_tokens(q_tokens[i][:-1], lane)
                        prompts[lane] = q_tokens[i][-1:]
                with self.times.stage("decode"):
                    out = s.generate_parallel(prompts, samplings[batch[0]], limits[batch[0]], self.prompt.stop)
                for lane, i in enumerate(batch, start=1):
                    texts[i] = out[lane]
                    s.clear(lane)
        self._finish(prefix)
        return [Answer(q, t) for q, t in zip(questions, texts)]

    def stream(self, audio: AudioSource, question: str, sampling: Sampling | None = None,
               max_tokens: int = 256) -> Iterator[str]:
        """The answer to one question as text pieces, each as soon as it is decoded."""
        q_tokens = self.tokens(self.prompt.tail(question))
        prefix = self.prefill(audio, len(q_tokens) + max_tokens)
        s = self.session
        with self.times.stage("question"):
            s.eval_tokens(q_tokens)
        first = True
        t0 = time.perf_counter()
        for piece in s.generate(sampling or Sampling(), max_tokens, self.prompt.stop):
            if first:
                self.figures["first_piece_after_audio_ms"] = (time.perf_counter() - prefix.audio_end_s) * 1e3
                first = False
            yield piece
        self.times.add("decode", (time.perf_counter() - t0) * 1e3)
        self._finish(prefix)

    def conversation(self, audio: AudioSource, answer_tokens: int = 2048) -> "Conversation":
        """A multi-turn chat about one song; the audio is prefilled once, here."""
        from .chat import Conversation

        return Conversation(self, self.prefill(audio, answer_tokens))


def _per_question(value, n: int, name: str) -> list:
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"{name}: {len(value)} values for {n} questions")
        return list(value)
    return [value] * n
