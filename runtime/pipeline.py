"""Ask a bundle about a song: the public API of the runtime.

    from gamma_rt.runtime import Pipeline, RuntimeOptions
    with Pipeline.open("bundle", RuntimeOptions(threads=1)) as pipe:
        answers = pipe.ask("song.flac", ["What genre is this?", "What is the tempo?"])
        for piece in pipe.stream("song.flac", "Describe it."):
            print(piece, end="")

How a run goes (one code path for files, arrays and live streams; a whole file is a stream run to the end):

1. the decoder evaluates the prompt head (the chat template up to the audio) on sequence 0;
2. each 30 s window, as soon as its audio has arrived, goes through the front end and the audio backend
   (on a worker thread, one window ahead) and its embeddings are prefilled on sequence 0 right away,
   with the manifest's time marker before every window but the first;
3. at the end of the audio only the question remains: its tokens and the answer. So the time from the
   end of the audio to the first token does not grow with the song's length;
4. several questions fork sequence 0 (the audio is not evaluated again) and decode as parallel sequences;
5. a :class:`Conversation` keeps sequence 0 and appends one turn after another to it.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterator, Sequence

import numpy as np

from gamma_rt.errors import AudioError, BundleError
from gamma_rt.manifest import MANIFEST_NAME, Manifest

from .audio import AudioStream, open_audio
from .backends import AudioBackend, open_backend
from .cores import cores_shared
from .decoder import ALL_LAYERS, DecoderSession, Sampling, context_size_for
from .embed import AudioLayout, WindowEmbedding, embed_windows
from .embed_cache import EmbeddingCache
from .options import RuntimeOptions
from .prompt import prompt_from_manifest
from .timings import StageTimes

AudioSource = "str | Path | BinaryIO | AudioStream | np.ndarray"
PROMPT_SLACK_TOKENS = 256  # the prompt head, the question and follow-up turns, besides the audio and the answer
MARKER_TOKENS = 16  # a time marker's tokens, at most (context sizing only)
DEFAULT_AUDIO_SECONDS = 300  # context reserved when the audio's length is unknown (a live stream)


@dataclass
class Answer:
    """One question's answer. ``tokens``: the decoder's token ids of the answer (no end token)."""

    question: str
    text: str
    tokens: list[int] = field(default_factory=list)


@dataclass
class AudioPrefix:
    """What sequence 0 holds after the audio: ``n_tokens`` positions, ``windows`` windows.

    audio_end_s: perf_counter() when the last window was prefilled (the end of the audio, as a user sees it)."""

    n_tokens: int
    windows: int
    audio_end_s: float


class Pipeline:
    """An opened bundle: the audio backend, one decoder context, the prompt format, an optional cache."""

    def __init__(self, bundle: Path, manifest: Manifest, backend: AudioBackend, options: RuntimeOptions,
                 progress=None):
        self.bundle, self.manifest, self.backend, self.options = bundle, manifest, backend, options
        self.layout = AudioLayout.from_manifest(manifest.audio)
        if options.every_window and self.layout.max_seconds is not None:
            print(f"gamma-rt: --every-window: reading past the model's {self.layout.max_seconds:g} s (manifest "
                  "audio.max_seconds), window after window; the model was not trained on longer audio",
                  file=sys.stderr)
            self.layout = dataclasses.replace(self.layout, max_seconds=None)
        self.prompt = prompt_from_manifest(manifest.prompt, str(bundle / MANIFEST_NAME))
        self.decoder_file = manifest.path(bundle, options.decoder)
        self.lora_file = manifest.path(bundle, options.lora) if options.lora else None
        self.progress = progress
        self.cache = EmbeddingCache(options.cache_dir, bundle, backend.precision) if options.cache_dir else None
        self.times = StageTimes()  # of the last run; the backend's stages are merged in at its end
        self.figures: dict[str, float] = {}  # key figures of the last run in ms (after_audio_ms, ...)
        self.session: DecoderSession | None = None
        self.reserve(DEFAULT_AUDIO_SECONDS, 512)

    @classmethod
    def open(cls, bundle: str | Path, options: RuntimeOptions | None = None, *, verify: bool = True,
             progress=None, **overrides) -> "Pipeline":
        """Load a bundle with ``options`` (see :class:`RuntimeOptions`); keyword ``overrides`` replace single
        fields, so ``Pipeline.open(b, threads=1)`` works too. ``verify`` checks every file's sha256 first
        (cached, so cheap after the first time). ``progress`` wraps the window iterator (a progress bar)."""
        bundle = Path(bundle)
        options = (options or RuntimeOptions()).replace(**overrides) if overrides else (options or RuntimeOptions())
        manifest = Manifest.load(bundle, verify=verify)
        options = options.replace(decoder=_decoder_name(manifest, bundle, options))
        audio_backend = open_backend(bundle, manifest, options.backend, options.precision, options.threads)
        return cls(bundle, manifest, audio_backend, options, progress)

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
        yield from embed_windows(blocks, self.backend, self.layout, self.times, self.cache, self.options.overlap,
                                 self.options.batch_windows)

    def _overlap(self) -> bool:
        """Encode the next window on a worker thread while this one is prefilled: asked for, and not where
        the encoders and the decoder would share too few CPU cores (cores.py)."""
        layers = self.session.gpu_layers if self.session is not None else 0
        return self.options.overlap and not cores_shared(self.backend.name, layers, self.options.threads)

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

    def reserve(self, audio_seconds: float, answer_tokens: int) -> None:
        """Make the decoder context hold ``audio_seconds`` of audio plus ``answer_tokens`` (reopened larger
        when it is too small; never shrunk). Runs before each song; call it to size the context ahead."""
        if self.layout.max_seconds is not None:
            audio_seconds = min(audio_seconds, self.layout.max_windows * self.layout.window_seconds)
        windows = math.ceil(audio_seconds / self.layout.window_seconds)
        tps = self.layout.tokens_per_window / self.layout.window_seconds
        n_ctx = context_size_for(audio_seconds, tps, PROMPT_SLACK_TOKENS + windows * MARKER_TOKENS, answer_tokens)
        if self.session is not None and self.session.n_ctx >= n_ctx:
            return
        if self.session is not None:
            self.session.close()
        self.session = DecoderSession(self.decoder_file, n_ctx=n_ctx, n_threads=self.options.threads,
                                      n_gpu_layers=self.options.gpu_layers, lora=self.lora_file,
                                      kv_type=self.options.kv_type)

    def decoder_placement(self) -> str:
        """Where the decoder runs, in words (for --verbose)."""
        layers = self.session.gpu_layers
        if layers == 0:
            why = "--gpu-layers 0" if self.options.gpu_layers == 0 else "this llama.cpp build has no GPU offload"
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
        self.reserve(duration or DEFAULT_AUDIO_SECONDS, answer_tokens)
        s = self.session
        s.clear()
        with self.times.stage("prefill"):
            s.eval_tokens(self.tokens(self.prompt.head()))
        n_windows = 0
        embeddings = embed_windows(blocks, self.backend, self.layout, self.times, self.cache, self._overlap(),
                                   self.options.batch_windows)
        if self.progress is not None and duration:
            total = math.ceil(duration / self.layout.window_seconds)
            if self.layout.max_windows is not None:
                total = min(total, self.layout.max_windows)
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

    def finish(self, prefix: AudioPrefix) -> None:
        """Close the books on a run: the backend's stage times and the figures measured from ``prefix``."""
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
        ids: list[list[int]] = [[] for _ in questions]
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
                    texts[i], ids[i] = out[lane], s.generated[lane]
                    s.clear(lane)
        self.finish(prefix)
        return [Answer(q, t, i) for q, t, i in zip(questions, texts, ids)]

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
        self.finish(prefix)

    def conversation(self, audio: AudioSource, answer_tokens: int = 2048) -> "Conversation":
        """A multi-turn chat about one song; the audio is prefilled once, here."""
        return Conversation(self, self.prefill(audio, answer_tokens))


class Conversation:
    """A multi-turn conversation about one song.

    The audio is prefilled once on sequence 0. Every turn appends its text to that same sequence and the
    answer's tokens stay in the cache (the decoder evaluates each accepted token), so a follow-up question
    costs only its own tokens, never the audio again."""

    def __init__(self, pipeline: Pipeline, prefix: AudioPrefix):
        self.pipeline = pipeline
        self.prefix = prefix
        self.turns: list[tuple[str, str]] = []
        pipeline.finish(prefix)

    def say(self, question: str, sampling: Sampling | None = None, max_tokens: int = 256) -> Iterator[str]:
        """Ask the next question; yields the answer's text pieces as they are decoded."""
        p = self.pipeline
        text = p.prompt.tail(question) if not self.turns else p.prompt.follow_up(question)
        with p.times.stage("question"):
            p.session.eval_tokens(p.tokens(text))
        t0 = time.perf_counter()
        answer = []
        for piece in p.session.generate(sampling or Sampling(), max_tokens, p.prompt.stop):
            answer.append(piece)
            yield piece
        p.times.add("decode", (time.perf_counter() - t0) * 1e3)
        self.turns.append((question, "".join(answer)))

    def ask(self, question: str, sampling: Sampling | None = None, max_tokens: int = 256) -> str:
        return "".join(self.say(question, sampling, max_tokens))


# GGUF weight types from the most faithful to the smallest: "auto" takes the first one a bundle has
DECODER_ORDER = ("f32", "f16", "bf16", "q8_0", "q6_k", "q5_k_m", "q5_k_s", "q5_0", "q4_k_m", "q4_k_s", "q4_0",
                 "q3_k_m", "q3_k_s", "q2_k")


def _lora(manifest: Manifest, bundle: Path, name: str):
    lora = manifest.component(name)
    if lora.kind != "gguf_lora":
        raise BundleError(f"{bundle / MANIFEST_NAME}: --lora {name}: components.{name}.kind is {lora.kind!r}, "
                          "not gguf_lora (a LoRA adapter)")
    return lora


def lora_base(manifest: Manifest, bundle: Path, name: str) -> str:
    """The manifest key of the decoder LoRA adapter ``name`` was exported with (``decoder.base``)."""
    base = _lora(manifest, bundle, name).extra.get("base")
    if not isinstance(base, str) or base not in manifest.components:
        raise BundleError(f"{bundle / MANIFEST_NAME}: field components.{name}.extra.base names {base!r}, "
                          "which the bundle lacks")
    return base


def check_lora_fits(manifest: Manifest, bundle: Path, name: str, decoder: str) -> None:
    """Refuse, in one line, adapter ``name`` on a decoder of another base, or on one it is merged into."""
    lora = _lora(manifest, bundle, name)
    extra = manifest.component(decoder).extra
    if extra.get("lora_merged") == name:
        raise BundleError(f"{bundle / MANIFEST_NAME}: --lora {name} on --decoder {decoder}, which has {name} merged "
                          f"in already; use --decoder {lora.extra.get('base')} (or leave --decoder out)")
    if extra.get("base_id") is None or extra.get("base_id") != lora.extra.get("base_id"):
        raise BundleError(f"{bundle / MANIFEST_NAME}: --lora {name} was made for base {lora.extra.get('base')!r} "
                          f"(extra.base_id {str(lora.extra.get('base_id'))[:12]}), not for --decoder {decoder}")


def decoder_files(bundle: str | Path, options: RuntimeOptions) -> tuple[Path, Path | None]:
    """(the GGUF, the LoRA GGUF or None) that ``Pipeline.open(bundle, options)`` loads; the bundle's files
    verified first."""
    bundle = Path(bundle)
    manifest = Manifest.load(bundle, verify=True)
    decoder = manifest.path(bundle, _decoder_name(manifest, bundle, options))
    return decoder, manifest.path(bundle, options.lora) if options.lora else None


def _decoder_name(manifest: Manifest, bundle: Path, options: RuntimeOptions) -> str:
    """``options.decoder``, or for "auto" the --lora adapter's base or the best GGUF; BundleError when it
    names no GGUF, or one the adapter does not fit."""
    name = options.decoder
    if options.lora and name == "auto":
        name = lora_base(manifest, bundle, options.lora)
    if name == "auto":
        name = best_decoder(manifest, bundle)
    gguf = manifest.component(name)
    if gguf.kind != "gguf":
        raise BundleError(f"{bundle / MANIFEST_NAME}: components.{name}.kind is {gguf.kind!r}, not gguf")
    if options.lora:
        check_lora_fits(manifest, bundle, options.lora, name)
    return name


def best_decoder(manifest: Manifest, bundle: Path) -> str:
    """The manifest key of the bundle's most faithful GGUF decoder."""
    ggufs = [name for name, c in manifest.components.items() if c.kind == "gguf"]
    if not ggufs:
        raise BundleError(f"{bundle / MANIFEST_NAME}: no GGUF decoder in components; run `gamma-rt export gguf`")

    def rank(name: str) -> int:
        kind = "f32" if name == "decoder" else name.split(".", 1)[-1]
        return DECODER_ORDER.index(kind) if kind in DECODER_ORDER else len(DECODER_ORDER)

    return min(ggufs, key=lambda name: (rank(name), name))


def _per_question(value, n: int, name: str) -> list:
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"{name}: {len(value)} values for {n} questions")
        return list(value)
    return [value] * n
