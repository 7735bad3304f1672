"""Songs per hour of `gamma-rt tag`'s per-track work on a bundle, with and without prefix reuse.

``songs_per_hour(bundle, tracks)`` times the model side of tagging (decode, encode, prefill, answers) on the
given audio files, twice, in the same run so the ratio holds on a noisy machine:

- ``with_prefix_reuse``: one ``Pipeline.ask`` per track with every prompt of the set, so the questions share
  one encode and one audio prefill (what ``gamma-rt tag`` does);
- ``without_prefix_reuse``: one ``ask`` per prompt, on a pipeline with no embedding cache, so every question
  pays its own encode and prefill (what a naive loop over questions costs).

Returns a JSON-ready dict: the two rates (songs/hour), their ratio, the audio hours per hour, the inputs and
the versions. The bench engineer calls it from bench/'s runner; it imports no torch.

``segment_throughput`` (and ``python -m gamma_rt.bench.tagging BUNDLE --out FILE``) times the real
``gamma-rt tag`` command on a generated library (gamma_rt/synth.py, several formats), whole tracks and then
``--segment middle:60`` with the same flags, each into a fresh results folder, and gives songs/hour of each
and their ratio:

    python -m gamma_rt.bench.tagging BUNDLE --tracks 50 --seconds 150 --threads 2 \\
        --out bench/results/tag_segment_throughput-small.json
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gamma_rt.machine import describe


def songs_per_hour(bundle: str | Path, tracks: list[str | Path], prompt_set_path: str | Path | None = None,
                   backend: str = "auto", repeats: int = 1) -> dict:
    """Both rates over ``tracks`` (audio files), ``repeats`` passes each; see the module docstring."""
    import llama_cpp

    from gamma_rt.runtime.options import RuntimeOptions
    from gamma_rt.runtime.tagging.library import Track
    from gamma_rt.runtime.tagging.prompt_sets import PromptSet
    from gamma_rt.runtime.tagging.worker import TrackTagger, decode

    prompt_set = PromptSet.load(prompt_set_path) if prompt_set_path else PromptSet.default()
    items = [decode(Track.stat(t)) for t in tracks]
    bad = [i.track.path for i in items if i.error]
    if bad:
        raise ValueError(f"bench tracks must decode: {bad}")
    audio_hours = sum(i.duration_s for i in items) / 3600

    options = RuntimeOptions(backend=backend)  # no embedding cache: both rates pay for their encodes
    reuse = TrackTagger(bundle, prompt_set, options)
    t0 = time.perf_counter()
    for _ in range(repeats):
        for item in items:
            record = reuse.tag(item)
            if record["status"] != "ok":  # a failed track would time an error path, not tagging
                raise RuntimeError(f"bench track failed: {record['error']}")
    with_reuse_s = (time.perf_counter() - t0) / repeats

    single = TrackTagger(bundle, prompt_set, options)
    t0 = time.perf_counter()
    for _ in range(repeats):
        for item in items:
            for prompt, sampling in zip(prompt_set.prompts, single.samplings):
                single.pipeline.ask(item.audio, [prompt.question], sampling=[sampling],
                                    max_tokens=[prompt.max_tokens])
    without_reuse_s = (time.perf_counter() - t0) / repeats

    n = len(items)
    return {
        "bench": "tagging.songs_per_hour",
        "songs": n,
        "prompts": len(prompt_set.prompts),
        "prompt_set_hash": prompt_set.hash,
        "bundle": str(bundle),
        "with_prefix_reuse": {"seconds": with_reuse_s, "songs_per_hour": 3600 * n / with_reuse_s,
                              "audio_hours_per_hour": 3600 * audio_hours / with_reuse_s},
        "without_prefix_reuse": {"seconds": without_reuse_s, "songs_per_hour": 3600 * n / without_reuse_s},
        "speedup": without_reuse_s / with_reuse_s,
        "machine": describe(threads=0),  # the pipeline's default: all cores
        "versions": {"llama_cpp_python": llama_cpp.__version__},
    }


# --- `gamma-rt tag` with --segment against whole tracks -------------------------------------------------

# A two-question set whose answers are a few tokens each (enums and a boolean), for when the default set's
# long answers (structure, caption) would make a CPU run take hours: the comparison is about the audio side.
QUICK_PROMPTS = """\
name = "bench-quick"

[sampling]
temperature = 0.0
seed = 0

[[prompt]]
name = "key"
question = "What is the musical key of this track?"
schema = { type = "object", properties = { tonic = { enum = ["C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B", "unknown"] }, mode = { enum = ["major", "minor", "unknown"] } } }

[[prompt]]
name = "vocals"
question = "Does this track have vocals?"
schema = { type = "object", properties = { vocals = { type = "boolean" } } }
"""

# suffix -> how it is written: libsndfile (format, subtype) or PyAV (container, codec)
LIBRARY_FORMATS = {
    "flac": ("sf", "FLAC", "PCM_16"),
    "wav": ("sf", "WAV", "PCM_16"),
    "mp3": ("sf", "MP3", "MPEG_LAYER_III"),
    "ogg": ("sf", "OGG", "VORBIS"),
    "m4a": ("av", "ipod", "aac"),
    "opus.webm": ("av", "webm", "libopus"),
}


def make_library(folder: Path, n: int, seconds: float, formats: tuple[str, ...] = tuple(LIBRARY_FORMATS)) -> list[Path]:
    """``n`` tracks of ``seconds`` of synthesized music (gamma_rt/synth.py; each its own seed, tempo and
    chords), cycling through ``formats``. Returns their paths."""
    from gamma_rt.synth import C_MAJOR_I_V_VI_IV, G_MAJOR_I_VI_IV_V, Music, write

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        suffix = formats[i % len(formats)]
        music = Music(seconds, 44100, 2, seed=i, bpm=90 + (i * 7) % 70,
                      chords=(C_MAJOR_I_V_VI_IV, G_MAJOR_I_VI_IV_V)[i % 2])
        path = folder / f"track{i:03d}.{suffix}"
        how, container, codec = LIBRARY_FORMATS[suffix]
        if how == "sf":
            write(path, music, subtype=codec, format=container)
        else:
            _encode_av(path, music, container, codec)
        paths.append(path)
    return paths


def _encode_av(path: Path, music, container: str, codec: str) -> None:
    from gamma_rt.synth import encode

    encode(path, music, container, codec, rate=48000 if codec == "libopus" else None)  # Opus runs at 48 kHz


def tag_command(library: Path, bundle: Path, out: Path, prompts: Path | None, segment: str | None,
                threads: int, workers: int) -> list[str]:
    cmd = [sys.executable, "-m", "gamma_rt.cli", "tag", str(library), "--bundle", str(bundle), "--out", str(out),
           "--threads", str(threads), "--workers", str(workers), "--quiet"]
    if prompts is not None:
        cmd += ["--prompts", str(prompts)]
    if segment:
        cmd += ["--segment", segment]
    return cmd


def segment_throughput(bundle: Path, library: Path, work: Path, segment: str = "middle:60", threads: int = 2,
                       workers: int = 1, prompts: Path | None = None) -> dict:
    """Songs/hour of the real ``gamma-rt tag`` command on ``library``, whole tracks then ``--segment
    segment``, one after the other with the same flags, each into its own fresh results folder (so no
    journal entry or cached embedding of one mode serves the other). The wall time of each command is
    timed (model load and result files included), and the per-record stage timings are summed."""
    import json

    runs = {}
    for mode, seg in (("whole", None), ("segment", segment)):
        out = work / f"results-{mode}"
        if out.exists():
            shutil.rmtree(out)
        cmd = tag_command(library, bundle, out, prompts, seg, threads, workers)
        load_before = os.getloadavg()
        t0 = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        load_after = os.getloadavg()
        records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines() if line.strip()]
        ok = [r for r in records if r["status"] == "ok"]
        if done.returncode or len(ok) != len(records) or not records:
            raise RuntimeError(f"{mode}: exit {done.returncode}, {len(ok)}/{len(records)} ok: {done.stderr[-2000:]}")
        analysed = sum((r.get("segment") or {}).get("seconds") or r["duration_s"] for r in ok)
        runs[mode] = {
            "command": " ".join(["gamma-rt"] + cmd[3:]),
            "songs": len(ok),
            "wall_s": round(wall, 1),
            "songs_per_hour": round(3600 * len(ok) / wall, 1),
            "audio_analysed_s": round(analysed, 1),
            "stage_ms_total": _sum_timings(ok),
            "load_average_before": [round(x, 2) for x in load_before],  # the machine is shared
            "load_average_after": [round(x, 2) for x in load_after],
        }
    return {
        "bench": "tagging.segment_throughput",
        "segment": segment,
        "whole": runs["whole"],
        "segment_run": runs["segment"],
        "songs_per_hour_ratio_segment_over_whole": round(
            runs["segment"]["songs_per_hour"] / runs["whole"]["songs_per_hour"], 2),
    }


def _sum_timings(records: list[dict]) -> dict:
    total: dict = {}
    for r in records:
        for k, v in (r.get("timings") or {}).items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                total[k] = round(total.get(k, 0) + v, 1)
    return total


def main(argv: list[str] | None = None) -> None:
    import argparse
    import json

    import llama_cpp

    parser = argparse.ArgumentParser(description="Songs/hour of `gamma-rt tag` with --segment against whole "
                                     "tracks, on a generated library, in one run.")
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--tracks", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=150.0, help="length of each generated track (default 150)")
    parser.add_argument("--formats", default=",".join(LIBRARY_FORMATS), help=f"from {list(LIBRARY_FORMATS)}")
    parser.add_argument("--segment", default="middle:60")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--prompts", default="quick",
                        help="'quick' (two short answers, QUICK_PROMPTS), 'default' (the built-in set) or a file")
    parser.add_argument("--work", type=Path, help="library and results folders (default: a temporary folder)")
    parser.add_argument("--out", type=Path, required=True, help="JSON result file")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        prompts = None if args.prompts == "default" else Path(args.prompts)
        if args.prompts == "quick":
            prompts = work / "quick_prompts.toml"
            prompts.write_text(QUICK_PROMPTS)
        library = work / "library"
        formats = tuple(args.formats.split(","))
        t0 = time.perf_counter()
        if not library.exists() or len(list(library.iterdir())) != args.tracks:
            if library.exists():
                shutil.rmtree(library)
            make_library(library, args.tracks, args.seconds, formats)
        make_s = time.perf_counter() - t0
        result = segment_throughput(args.bundle, library, work, args.segment, args.threads, args.workers, prompts)
    result["inputs"] = {"tracks": args.tracks, "seconds_per_track": args.seconds, "formats": list(formats),
                        "prompts": args.prompts, "prompts_toml": QUICK_PROMPTS if args.prompts == "quick" else None,
                        "bundle": str(args.bundle), "threads": args.threads, "workers": args.workers,
                        "make_library_s": round(make_s, 1)}
    result["bench_command"] = "python -m gamma_rt.bench.tagging " + " ".join(argv if argv is not None else sys.argv[1:])
    result["machine"] = describe(threads=args.threads)
    result["versions"] = {"llama_cpp_python": llama_cpp.__version__}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("whole", "segment_run", "songs_per_hour_ratio_segment_over_whole")},
                     indent=2))


if __name__ == "__main__":
    main()
