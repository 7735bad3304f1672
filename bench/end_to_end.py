"""End to end on whole files through the runtime's own ``Pipeline``: real-time factor, time to first token
after the end of the audio, orchestration overhead.

A file of synthesized music (gamma_rt/synth.py; 44.1 kHz stereo FLAC, so reading, resampling and mixing down are part of
the cost) goes through ``Pipeline.stream`` with one question, as ``gamma-rt ask`` runs it. The stage times
are the Pipeline's own (``pipe.times``: read, front end, the four audio graphs, prefill, question, decode).

- way ``runtime``: the Pipeline as shipped (the bench's RuntimeOptions: backend, precision, GPU layers),
  encoding one window ahead on a worker thread while the decoder prefills the previous one. Its stages overlap, so their sum exceeds the wall time and says nothing
  about overhead; this way gives the real-time factor and the time to first token.
- way ``runtime-sequential``: the same Pipeline with ``overlap=False``. Every stage runs in turn, so

      overhead = (total - sum of stage times) / sum of stage times

  is what the Pipeline's own code around the stages costs.

"Time to first token after audio" (``ttft_ms``) runs from the moment the last audio block is delivered to
the first answer text. A file reads far faster than real time, so :class:`LiveFile` delivers its last block
only once every earlier window is prefilled, as a live input that the runtime keeps up with would: what
remains is the last window's encode and prefill, the question and the first token, which must not grow with
the song's length. The Pipeline's own figure, from the end of the last prefill, is kept too
(``first_piece_after_prefill_ms``).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from gamma_rt.synth import Music, write

from .timing import reference_row, summarize

QUESTION = "Describe this piece: genre, mood, instruments and tempo."


def live_file(path: str | Path, pipe, wait: bool):
    """The file as an AudioStream for ``pipe`` whose last block waits (if ``wait``) for the earlier windows.

    Returns a :class:`LiveFile`; after the run, ``last_block_s`` is when its last block was delivered and
    ``waited_ms`` how long it held that block back (charged to the Pipeline's ``read`` stage, so bench
    takes it out again)."""
    from gamma_rt.runtime.audio import AudioStream, open_audio

    class LiveFile(AudioStream):
        def __init__(self, stream: AudioStream):
            self.__dict__.update(stream.__dict__)
            self.last_block_s: float | None = None
            self.waited_ms = 0.0

        def __iter__(self):
            window = pipe.layout.window_seconds * pipe.layout.sample_rate
            delivered = 0
            held = None
            for block in super().__iter__():
                if held is not None:
                    delivered += len(held)
                    self.last_block_s = time.perf_counter()
                    yield held
                held = block
            if held is None:
                return
            if wait:  # prefill calls: the prompt head, then one per window
                t0 = time.perf_counter()
                while pipe.times.calls.get("prefill", 0) < 1 + int(delivered // window):
                    time.sleep(0.002)
                self.waited_ms += (time.perf_counter() - t0) * 1e3
            self.last_block_s = time.perf_counter()
            yield held

    return LiveFile(open_audio(path, pipe.layout.sample_rate))


def ask_once(pipe, path: str | Path, n_decode: int, overlap: bool) -> dict:
    """One question about one file through ``pipe.stream``; the Pipeline's stage times and the key times."""
    pipe.options = pipe.options.replace(overlap=overlap)
    t_start = time.perf_counter()
    stream = live_file(path, pipe, wait=overlap)
    first = None
    pieces = 0
    for _ in pipe.stream(stream, QUESTION, max_tokens=n_decode):
        first = first or time.perf_counter()
        pieces += 1
    t_end = time.perf_counter()
    first = first or t_end  # an answer that ended at once: its end is when the caller learns of it
    parts = dict(pipe.times.ms)
    parts["read"] = parts.get("read", 0.0) - stream.waited_ms
    stage_sum = sum(parts.values())
    total = (t_end - t_start) * 1e3
    return {"total_ms": total, "parts_ms": parts, "stage_sum_ms": stage_sum,
            "windows": pipe.times.calls.get("prefill", 1) - 1, "ttft_ms": (first - stream.last_block_s) * 1e3,
            "first_piece_after_prefill_ms": pipe.figures.get("first_piece_after_audio_ms"),
            "waited_ms": stream.waited_ms, "answer_pieces": pieces, "overlap": overlap}


def open_pipeline(opts, max_seconds: float, decoder: str, answer_tokens: int | None = None):
    """The bundle's Pipeline under ``opts.runtime`` (backend, precision, GPU layers) with ``opts.threads`` and
    ``decoder``, its context sized for ``max_seconds`` and ``answer_tokens`` at once (so no timed run pays for
    re-creating it, and the 30 s and 10 min runs attend over the same cache size)."""
    from gamma_rt.runtime import pipeline

    pipe = pipeline.Pipeline.open(opts.bundle, opts.runtime.replace(decoder=decoder, threads=opts.threads))
    pipe.reserve(max_seconds, pipeline.PROMPT_SLACK_TOKENS + (answer_tokens or opts.n_decode))
    return pipe


def decoder_component(opts) -> str:
    """``opts.runtime.decoder`` when named; for ``auto`` the F16 GGUF where the bundle has one (half the cache
    memory of F32 for a 10-min song), else the runtime's own pick."""
    from gamma_rt.manifest import Manifest
    from gamma_rt.runtime.pipeline import best_decoder

    if opts.runtime.decoder != "auto":
        return opts.runtime.decoder
    manifest = Manifest.load(opts.bundle)
    return "decoder.f16" if "decoder.f16" in manifest.components else best_decoder(manifest, Path(opts.bundle))


def measure_lengths(opts, scratch: Path, result: dict) -> None:
    """Fill ``result["end_to_end"]`` with ``runtime`` rows per length in ``opts.lengths()`` and
    ``runtime-sequential`` rows for the shortest. The shortest gets ``opts.warmup`` untimed runs first."""
    lengths = opts.lengths()
    files = {length: write(scratch / f"music-{int(length)}s.flac", Music(length, channels=2)) for length in lengths}
    result.setdefault("_audio_files", {}).update({str(k): str(v) for k, v in files.items()})
    decoder = decoder_component(opts)
    pipe = open_pipeline(opts, max(lengths), decoder)
    shortest = files[min(lengths)]
    overlapped, sequential = {}, {}
    overlap = opts.runtime.overlap  # --no-overlap: the ``runtime`` rows run sequentially too
    try:
        for _ in range(opts.warmup):
            ask_once(pipe, shortest, opts.n_decode, overlap=overlap)
        runs = [ask_once(pipe, shortest, opts.n_decode, overlap=False) for _ in range(opts.repeat)]
        sequential[_label(min(lengths))] = _row(min(lengths), runs, overhead=True)
        for length in lengths:
            runs = [ask_once(pipe, files[length], opts.n_decode, overlap=overlap) for _ in range(opts.repeat)]
            overlapped[_label(length)] = _row(length, runs, overhead=not overlap)
        backend = f"{pipe.backend.name} {pipe.backend.precision}"
    finally:
        pipe.close()
    result["end_to_end"]["runtime"] = overlapped
    result["end_to_end"]["runtime-sequential"] = sequential
    result["inputs"]["end_to_end"] = {"decoder": decoder, "backend": backend, "overlap": overlap,
                                      "question": QUESTION, "n_decode": opts.n_decode,
                                      "via": "runtime.pipeline.Pipeline.stream"}


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1e3


def _label(seconds: float) -> str:
    return f"{seconds:g}s"


def _row(seconds: float, runs: list[dict], overhead: bool) -> dict:
    total = [r["total_ms"] for r in runs]
    stage_sum = [r["stage_sum_ms"] for r in runs]
    after_prefill = [r["first_piece_after_prefill_ms"] for r in runs if r["first_piece_after_prefill_ms"] is not None]
    parts = {k: summarize([r["parts_ms"].get(k, 0.0) for r in runs]).to_dict() for k in runs[0]["parts_ms"]}
    return {
        "seconds": seconds,
        "windows": runs[0]["windows"],
        "total_ms": summarize(total).to_dict(),
        "rtf": summarize([t / (1000 * seconds) for t in total]).to_dict(),
        "ttft_ms": summarize([r["ttft_ms"] for r in runs]).to_dict(),
        "first_piece_after_prefill_ms": summarize(after_prefill).to_dict() if after_prefill else None,
        "stage_sum_ms": summarize(stage_sum).to_dict(),
        # with overlapping stages their sum exceeds the wall time: overhead is judged on sequential runs only
        "overhead": float(np.median([(t - s) / s for t, s in zip(total, stage_sum)])) if overhead else None,
        "held_back_ms": summarize([r["waited_ms"] for r in runs]).to_dict(),
        "parts_ms": parts,
    }


def tagging_throughput(opts, scratch: Path) -> dict:
    """Songs/hour at ``opts.questions`` questions per song, with and without prefix reuse (bench/throughput.py),
    on two 30 s songs through the same Pipeline setup as the end-to-end rows."""
    from .throughput import songs_per_hour

    tracks = [write(scratch / f"song-{i}.flac", Music(30.0, channels=2, seed=i)) for i in range(2)]
    pipe = open_pipeline(opts, 30.0, decoder_component(opts), opts.questions * (opts.n_decode + 64))
    try:
        for _ in range(opts.warmup):
            pipe.ask(tracks[0], "What is this?", max_tokens=opts.n_decode)
        return songs_per_hour(pipe, tracks, opts.questions, opts.n_decode)
    finally:
        pipe.close()


def time_reference_pipeline(reference, request: dict) -> dict:
    """The PyTorch reference pipeline (export/families/gamma/reference.py) on the same files and question, per length.

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
        rows[_label(seconds)] = reference_row(seconds, runs, ("audio_side", "generate"))
    return rows
