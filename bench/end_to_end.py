"""End to end on whole files: real-time factor, time to first token after the end of the audio, overhead.

A file of synthesized music (44.1 kHz stereo FLAC, so reading, resampling and mixing down are part of
the cost) streams window by window through the runtime's own parts: ``open_audio`` -> ``windows`` ->
``log_mel_spectrogram`` -> the ONNX audio graphs -> ``DecoderSession.eval_embeddings``; then the
question's tokens and greedy decoding. Each part's time is taken as it runs, so

    overhead = (total - sum of part times) / sum of part times

is what the loop around the parts costs. "Time to first token after audio" starts when the audio
source is exhausted (the last window is cut) and ends when the first answer token is sampled: it holds
the last window's encode and prefill and the question, and must not grow with the song's length.
"""

from __future__ import annotations

import importlib
import time
from pathlib import Path

import numpy as np

from gamma_rt.manifest import Manifest

from .timing import summarize

QUESTION = "Describe this piece: genre, mood, instruments and tempo."


class PipelineAbsent(Exception):
    """The runtime part a measurement needs is not in this tree yet; the reason goes into ``skipped``."""


class StreamedAsk:
    """The runtime's parts opened once (ORT sessions, one decoder context) and run on files."""

    def __init__(self, bundle: str | Path, threads: int, max_seconds: float, n_decode: int, decoder: str | None = None):
        import onnxruntime as ort

        from gamma_rt.runtime.decoder import DecoderSession

        from .audio_side import onnx_variants
        from .decoder_side import gguf_variants

        self.bundle = Path(bundle)
        self.manifest = m = Manifest.load(bundle)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        stages = onnx_variants(m)["fp32"]
        self.sessions = {s: ort.InferenceSession(str(self.bundle / m.component(n).file), opts,
                                                 providers=["CPUExecutionProvider"]) for s, n in stages.items()}
        ggufs = gguf_variants(m)
        # f16 weights and cache: a 10-min song's cache in f32 would need twice the memory for the same answer speed
        self.decoder_type = decoder or ("f16" if "f16" in ggufs else next(iter(ggufs)))
        tpw = m.audio["tokens_per_window"]
        n_windows = int(np.ceil(max_seconds / m.audio["window_seconds"]))
        self.session = DecoderSession(self.bundle / m.component(ggufs[self.decoder_type]).file,
                                      n_ctx=n_windows * tpw + 256 + n_decode, n_threads=threads, n_seq_max=1,
                                      n_batch=tpw)
        self.n_decode = n_decode
        user = m.prompt["user_template"]
        head, tail = user.split("{audio}")
        self.head_tokens = self.session.tokenize(head.format(question=QUESTION))
        self.tail_tokens = self.session.tokenize(m.prompt["audio_end"] + tail.format(question=QUESTION))
        self.start_tokens = self.session.tokenize(m.prompt["audio_start"])

    def close(self) -> None:
        self.session.close()

    def ask(self, path: str | Path) -> dict:
        """Stream one file through every part; returns ms per part (summed over windows) and the key times."""
        from gamma_rt.runtime.audio import open_audio
        from gamma_rt.runtime.decoder import Sampling
        from gamma_rt.runtime.mel import log_mel_spectrogram
        from gamma_rt.runtime.windows import windows

        a = self.manifest.audio
        parts = dict.fromkeys(["read", "front_end", "temporal_encoder", "global_encoder", "fusion", "projector",
                               "prefill", "question", "decode"], 0.0)
        s = self.session
        t_start = time.perf_counter()
        s.clear()
        t = time.perf_counter()
        s.eval_tokens(self.head_tokens + self.start_tokens)
        parts["question"] += _ms(t)
        n_windows = 0
        clock: dict[str, float] = {}
        with open_audio(path, a["sample_rate"]) as stream:
            for window in windows(_timed(iter(stream), parts, clock), a["sample_rate"], a["window_seconds"]):
                n_windows += 1
                t = time.perf_counter()
                mel = log_mel_spectrogram(window.samples, a["n_mels"])[None]
                parts["front_end"] += _ms(t)
                embeddings = self._encode(mel, parts)[0, : window.valid_tokens(a["tokens_per_window"])]
                t = time.perf_counter()
                s.eval_embeddings(embeddings)
                parts["prefill"] += _ms(t)
        # end of audio: when the last samples were delivered (as for live input), not when EOF was noticed
        t_audio_end = clock["last_block"]
        t = time.perf_counter()
        s.eval_tokens(self.tail_tokens)
        parts["question"] += _ms(t)
        t = time.perf_counter()
        # the first answer text reaches the caller (or the answer ends, if its first token is an end token)
        answer = s.generate(Sampling(), max_tokens=self.n_decode)
        pieces = sum(1 for _ in _first_stamped(answer, clock))
        parts["decode"] += _ms(t)
        total = _ms(t_start)
        stage_sum = sum(parts.values())
        return {"total_ms": total, "parts_ms": parts, "stage_sum_ms": stage_sum, "windows": n_windows,
                "ttft_ms": (clock["first_output"] - t_audio_end) * 1e3, "answer_pieces": pieces}

    def _encode(self, mel: np.ndarray, parts: dict) -> np.ndarray:
        out = {}
        for stage, inputs in (("temporal_encoder", (mel,)), ("global_encoder", (mel,))):
            out[stage] = self._run(stage, inputs, parts)
        out["fusion"] = self._run("fusion", (out["temporal_encoder"], out["global_encoder"]), parts)
        return self._run("projector", (out["fusion"],), parts)

    def _run(self, stage: str, arrays, parts: dict) -> np.ndarray:
        sess = self.sessions[stage]
        t = time.perf_counter()
        y = sess.run(None, {i.name: x for i, x in zip(sess.get_inputs(), arrays)})[0]
        parts[stage] += _ms(t)
        return y


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1e3


def _first_stamped(pieces, clock: dict):
    """Yield ``pieces``, stamping ``clock["first_output"]`` at the first one or at the end if there is none."""
    for piece in pieces:
        clock.setdefault("first_output", time.perf_counter())
        yield piece
    clock.setdefault("first_output", time.perf_counter())


def _timed(blocks, parts: dict, clock: dict):
    """Yield ``blocks``, charging the time spent producing each (decode + resample) to ``parts["read"]``
    and stamping ``clock["last_block"]`` when each is delivered."""
    while True:
        t = time.perf_counter()
        try:
            block = next(blocks)
        except StopIteration:
            parts["read"] += _ms(t)
            return
        parts["read"] += _ms(t)
        clock["last_block"] = time.perf_counter()
        yield block


def measure_lengths(opts, scratch: Path, result: dict) -> None:
    """Fill ``result["end_to_end"]["runtime-parts"]`` with one row per length in ``opts.lengths()``.

    The shortest input gets ``opts.warmup`` untimed runs; longer ones reuse the warm sessions.
    """
    from .music import write_music

    lengths = opts.lengths()
    files = {length: write_music(scratch / f"music-{int(length)}s.flac", length) for length in lengths}
    result.setdefault("_audio_files", {}).update({str(k): str(v) for k, v in files.items()})
    runner = StreamedAsk(opts.bundle, opts.threads, max(lengths), opts.n_decode)
    rows = {}
    try:
        for _ in range(opts.warmup):
            runner.ask(files[min(lengths)])
        for length in lengths:
            runs = [runner.ask(files[length]) for _ in range(opts.repeat)]
            rows[_label(length)] = _row(length, runs)
    finally:
        runner.close()
    rows_meta = {"decoder": runner.decoder_type, "question": QUESTION, "n_decode": opts.n_decode}
    result["end_to_end"]["runtime-parts"] = rows
    result["inputs"]["end_to_end"] = rows_meta


def _label(seconds: float) -> str:
    return f"{seconds:g}s"


def _row(seconds: float, runs: list[dict]) -> dict:
    total = [r["total_ms"] for r in runs]
    stage_sum = [r["stage_sum_ms"] for r in runs]
    ttft = [r["ttft_ms"] for r in runs if r["ttft_ms"] is not None]
    parts = {k: summarize([r["parts_ms"][k] for r in runs]).to_dict() for k in runs[0]["parts_ms"]}
    return {
        "seconds": seconds,
        "windows": runs[0]["windows"],
        "total_ms": summarize(total).to_dict(),
        "rtf": summarize([t / (1000 * seconds) for t in total]).to_dict(),
        "ttft_ms": summarize(ttft).to_dict() if ttft else None,
        "stage_sum_ms": summarize(stage_sum).to_dict(),
        "overhead": float(np.median([(t - s) / s for t, s in zip(total, stage_sum)])),
        "parts_ms": parts,
    }


def tagging_throughput(opts, scratch: Path) -> dict:
    """Songs/hour at ``opts.questions`` questions per song, with and without prefix reuse (bench/tagging.py)."""
    try:
        importlib.import_module("gamma_rt.runtime.pipeline")  # bench/tagging.py drives its Pipeline
    except ModuleNotFoundError as e:
        if e.name != "gamma_rt.runtime.pipeline":
            raise
        raise PipelineAbsent("runtime/pipeline.py (Pipeline.ask) is not in this tree yet") from None
    from .music import write_music
    from .tagging import songs_per_hour

    tracks = [write_music(scratch / f"song-{i}.flac", 30.0, seed=i) for i in range(2)]
    prompts = _first_prompts(opts.questions, scratch / "prompts.toml")
    return songs_per_hour(opts.bundle, tracks, prompts, repeats=1)


def _first_prompts(n: int, out: Path) -> Path:
    """The default prompt set cut to its first ``n`` prompts (the set's own file, so its grammars are real)."""
    from importlib.resources import files

    text = (files("gamma_rt.runtime") / "default_prompts.toml").read_text()
    head, *prompts = text.split("[[prompt]]")
    if len(prompts) < n:
        raise ValueError(f"the default prompt set has {len(prompts)} prompts, fewer than {n}")
    out.write_text(head + "".join("[[prompt]]" + p for p in prompts[:n]))
    return out


def time_reference_pipeline(reference, request: dict) -> dict:
    """The PyTorch reference pipeline (export/reference.py) on the same files and question, per length.

    It reads the whole file, then encodes, then generates (no streaming), so its time to first token after
    the audio is its whole run and is not reported separately. Runs in the baselines child (it needs torch).
    """
    import torch

    torch.set_num_threads(request["threads"])
    files = {float(k): v for k, v in request["audio_files"].items()}
    if not files:
        return {"absent": "no end-to-end audio files (end_to_end was skipped)"}
    ref = reference.ReferencePipeline(request["checkpoint"])
    for _ in range(request["warmup"]):
        ref.ask(files[min(files)], QUESTION, max_tokens=request["n_decode"])
    rows = {}
    for seconds, path in sorted(files.items()):
        runs = []
        for _ in range(request["repeat"]):
            t = time.perf_counter()
            answer = ref.ask(path, QUESTION, max_tokens=request["n_decode"])
            runs.append({"total_ms": _ms(t), **answer.timings_ms})
        total = [r["total_ms"] for r in runs]
        rows[_label(seconds)] = {
            "seconds": seconds,
            "total_ms": summarize(total).to_dict(),
            "rtf": summarize([x / (1000 * seconds) for x in total]).to_dict(),
            "ttft_ms": None,
            "parts_ms": {k: summarize([r[k] for r in runs]).to_dict() for k in ("audio_side", "generate")},
        }
    return rows
