"""Do the tags ``gamma-rt tag`` writes match a labelled library, at the accuracies of ``gamma-rt eval``? (issue 16)

1. The bundle: the trained built-in (gamma_rt/builtin) as fp32 ONNX + F32 GGUF, built as ``gamma-rt demo``
   builds it (``demo.build_bundle``), or an existing one with ``--bundle``.
2. The library: N held-out labelled songs (``synthetic_tasks.eval_song(i, seed)``; seed 7 by default, so not
   the songs ``gamma-rt eval`` asks by default), rendered and written in turn as FLAC, MP3, M4A (AAC), Ogg
   Vorbis and Ogg Opus, each with a title tag, and ``labels.json`` beside them.
3. The real command, as a subprocess: ``gamma-rt tag LIBRARY --bundle B --out RESULTS --write-tags`` with the
   default prompt set (greedy; its key, tempo, instruments, mood, vocals, structure and caption questions are
   among the trained model's).
4. Read back: ``records.jsonl`` (the answers) and, with mutagen, the tags written into each file. Scored
   per track against its labels:
   - key, tempo, instruments of the records, as ``gamma-rt eval`` scores them (key exact, tempo within 4 %,
     instrument-set F1);
   - each written tag that has a template answer (mood, caption; genre once the tasks teach one) equal to
     the tag the template answer would write, and the caption tag's fields (key, tempo, meter, instruments,
     event) parsed and scored the same way;
   - each record answer equal to its template answer, per prompt;
   - the title tag still there after ``--write-tags``.
5. The same Song objects through ``gamma_rt.evaluation`` in-process, as ``gamma-rt eval`` asks them (rendered
   at the model's rate in memory), and the same eval questions on the library's files; a difference between
   tagging and eval then splits into the codec's part (eval vs eval on files) and the tagger's part (eval
   on files vs tag: the same questions and audio, greedy, so they should agree).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

from gamma_rt.errors import GammaError
from gamma_rt.synthetic_tasks import (ATTRIBUTES, answers, chance, eval_song, parse_instruments, parse_key,
                                      parse_meter, parse_number, score)

from .entry import run_module, write_json

RESULT_FORMAT = "gamma-rt-tag-accuracy/1"
DEFAULT_OUT = Path("bench") / "results" / "tag_accuracy.json"
DEFAULT_SEED = 7  # gamma-rt eval asks seed 0 by default; these tracks are other held-out songs
RECORD_ATTRIBUTES = ("key", "tempo", "instruments")  # the eval questions the default prompt set asks too
# suffix -> (writer, format or container, subtype or codec, sample rate): taggable formats, written in turn
FORMATS = {
    "flac": ("sf", "FLAC", "PCM_16", 44100),
    "mp3": ("sf", "MP3", "MPEG_LAYER_III", 44100),
    "m4a": ("av", "ipod", "aac", 44100),
    "ogg": ("sf", "OGG", "VORBIS", 44100),
    "opus": ("sf", "OGG", "OPUS", 48000),  # Opus runs at 48 kHz
}

EXAMPLE = """\
example:
  python -m gamma_rt.bench.tag_accuracy --tracks 20 --threads 2
  python -m gamma_rt.bench.tag_accuracy --tracks 3 --bundle gamma-rt-demo/bundle-trained --work /tmp/tagacc
"""


def _say(text: str) -> None:
    print(f"tag_accuracy: {text}", file=sys.stderr, flush=True)


# --- the library -------------------------------------------------------------------------------------------

def make_library(folder: Path, n: int, seed: int) -> list[dict]:
    """Write held-out songs 0..n-1 of ``seed`` into ``folder``, cycling through FORMATS, each with a title tag,
    and ``labels.json``. Returns the labels: per track its file, format, title, song fields, template answers."""
    folder.mkdir(parents=True, exist_ok=True)
    labels = []
    for i in range(n):
        song, suffix = eval_song(i, seed), list(FORMATS)[i % len(FORMATS)]
        path = folder / f"song{i:03d}.{suffix}"
        write_song(path, song, suffix)
        title = f"held-out song {i} (seed {song.seed})"
        set_title(path, title)
        labels.append({"file": path.name, "format": suffix, "title": title, "song": song.__dict__,
                       "answers": answers(song)})
    (folder / "labels.json").write_text(json.dumps(labels, indent=2) + "\n")
    return labels


def write_song(path: Path, song, suffix: str) -> None:
    import soundfile as sf

    from gamma_rt.synth import encode_blocks, render

    writer, container, codec, rate = FORMATS[suffix]
    samples = render(song, rate)
    if writer == "sf":
        sf.write(path, samples, rate, format=container, subtype=codec)
    else:
        encode_blocks(path, [samples], rate, 1, container, codec)


def set_title(path: Path, title: str) -> None:
    import mutagen

    audio = mutagen.File(path, easy=True)
    if audio.tags is None:
        audio.add_tags()
    audio["title"] = title
    audio.save()


def read_title(path: Path) -> str | None:
    import mutagen

    values = (mutagen.File(path, easy=True).tags or {}).get("title")
    return str(values[0]) if values else None


# --- gamma-rt tag --------------------------------------------------------------------------------------------

def tag_command(library: Path, bundle: Path, results: Path, threads: int | None) -> list[str]:
    cmd = [sys.executable, "-m", "gamma_rt.cli", "tag", str(library), "--bundle", str(bundle), "--out",
           str(results), "--write-tags", "--quiet"]
    return cmd + (["--threads", str(threads)] if threads else [])


def run_tag(library: Path, bundle: Path, results: Path, threads: int | None) -> dict:
    """Run ``gamma-rt tag --write-tags``; its exit code, wall time, what it printed, and the records by file."""
    from gamma_rt.runtime.tagging.records import read_records

    cmd = tag_command(library, bundle, results, threads)
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    records_file = results / "records.jsonl"
    if not records_file.is_file():
        raise GammaError(f"gamma-rt tag exited {done.returncode} without writing {records_file}: "
                         f"{(done.stderr.strip().splitlines() or [''])[-1]}")
    records = {Path(r["path"]).name: r for r in read_records(records_file, "jsonl")}
    return {"command": " ".join(["gamma-rt", *cmd[3:]]), "exit_code": done.returncode, "wall_s": round(wall, 1),
            "stderr_tail": done.stderr[-2000:],
            "tags_not_written": [line for line in done.stdout.splitlines() if line.startswith("tags not written")],
            "records": records}


# --- scoring -------------------------------------------------------------------------------------------------

def expected_tags(song, prompt_set) -> dict[str, str]:
    """field -> the text ``--write-tags`` would write from the template answer, for each tag prompt that has one."""
    template = answers(song)
    return {p.tag: p.tag_value(json.loads(template[p.name])) for p in prompt_set.prompts
            if p.tag and p.name in template}


def caption_fields(caption: str) -> dict[str, str]:
    """The caption as replies to the eval questions: "A piece in D minor at 96 BPM in 3/4, with piano and bass;
    the drums enter at 7 s." gives key, tempo "96", meter, instruments "piano and bass", event "7"."""
    bpm = re.search(r"(\d+(?:\.\d+)?)\s*BPM", caption)
    listed = re.search(r"\bwith (.*?)(;|$)", caption)
    event = re.search(r"\b(?:enters?|stops?) at (\d+)", caption)
    return {"key": caption, "tempo": bpm.group(1) if bpm else "", "meter": caption,
            "instruments": listed.group(1) if listed else caption, "event": event.group(1) if event else ""}


def score_track(song, got: dict, tags: dict, prompt_set) -> dict:
    """One track's scores, each in [0, 1]: the records' key/tempo/instruments, each templated tag exact, the
    caption tag's fields, and each record answer exact (``answer_exact``)."""
    replies = {a: json.dumps(got[a]) if a in got else "" for a in RECORD_ATTRIBUTES}
    scores = {a: v for a, v in score(song, {**replies, "meter": "", "event": ""}).items() if a in RECORD_ATTRIBUTES}
    for field, text in expected_tags(song, prompt_set).items():
        scores[f"{field}_tag"] = float(tags.get(field) == text)
    scores |= {f"caption_{a}": v for a, v in score(song, caption_fields(tags.get("caption") or "")).items()}
    template = answers(song)
    exact = {p.name: float(got.get(p.name) == json.loads(template[p.name])) for p in prompt_set.prompts
             if p.name in template}
    return {"scores": scores, "answer_exact": exact}


def template_answers(song) -> dict:
    """The record answers a perfect model gives: the template answer of each question, parsed."""
    return {name: json.loads(text) for name, text in answers(song).items() if text.startswith("{")}


def parsed(attribute: str, text: str):
    """What scoring reads from a reply: the key, the number, or the sorted instruments."""
    if attribute == "key":
        return parse_key(text)
    if attribute == "instruments":
        return sorted(parse_instruments(text))
    return parse_meter(text) if attribute == "meter" else parse_number(text)


# --- gamma-rt eval on the same songs ----------------------------------------------------------------------

def eval_replies(bundle: Path, songs, paths: list[Path], options) -> tuple[list[dict], list[dict]]:
    """The eval questions, greedily, about each song rendered in memory (as ``gamma-rt eval``) and about its file."""
    from gamma_rt.evaluation import pipeline_replies, scored_replies
    from gamma_rt.runtime.pipeline import Pipeline

    with Pipeline.open(bundle, options) as pipe:
        return pipeline_replies(pipe, songs), [scored_replies(pipe, p) for p in paths]


# --- the measurement -----------------------------------------------------------------------------------------

def measure(bundle: Path | None, n: int, seed: int, work: Path, threads: int | None, say=_say) -> dict:
    """Build or take the bundle, make the library, tag it, read it back, score it, and eval the same songs."""
    from gamma_rt.demo import build_bundle
    from gamma_rt.runtime.options import RuntimeOptions
    from gamma_rt.runtime.tagging.file_tags import read_tags
    from gamma_rt.runtime.tagging.prompt_sets import PromptSet

    if n < 1:
        raise GammaError(f"--tracks {n}: tag at least one track")
    if bundle is None:
        say(f"building the trained built-in's bundle (fp32 ONNX + F32 GGUF) in {work}")
        bundle = build_bundle(work, fresh=False, trained=True)
    library, results = work / "library", work / "results"
    say(f"writing {n} held-out songs (seed {seed}) as {', '.join(FORMATS)} into {library}")
    labels = make_library(library, n, seed)
    say(f"running gamma-rt tag --write-tags on {n} tracks")
    tag = run_tag(library, bundle, results, threads)
    say(f"gamma-rt tag exited {tag['exit_code']} in {tag['wall_s']:.0f} s; asking the same songs as gamma-rt eval")
    songs = [eval_song(i, seed) for i in range(n)]
    paths = [library / label["file"] for label in labels]
    start = time.perf_counter()
    rendered, on_files = eval_replies(bundle, songs, paths, RuntimeOptions(threads=threads))
    eval_s = round(time.perf_counter() - start, 1)
    prompt_set = PromptSet.default()
    tracks = []
    for label, song, path, reply, file_reply in zip(labels, songs, paths, rendered, on_files):
        record = tag["records"].get(label["file"])
        got = (record or {}).get("answers") or {}
        tags = read_tags(path)
        tracks.append({**{k: label[k] for k in ("file", "format", "title", "song")},
                       "status": record["status"] if record else "missing",
                       "error": record.get("error") if record else "no record",
                       "answers": got, "tags": tags, "expected_tags": expected_tags(song, prompt_set),
                       "title_kept": read_title(path) == label["title"],
                       **score_track(song, got, tags, prompt_set),
                       "eval_scores": score(song, reply), "eval_on_files_scores": score(song, file_reply),
                       "eval_replies": reply, "eval_on_files_replies": file_reply,
                       "same_as_eval_on_files": {a: parsed(a, json.dumps(got.get(a))) == parsed(a, file_reply[a])
                                                 for a in RECORD_ATTRIBUTES}})
    del tag["records"]
    return {"bundle": str(bundle), "tag_run": tag, "eval_seconds": eval_s, "prompt_set_hash": prompt_set.hash,
            "counts": _counts(tracks), "accuracy": summarize(tracks), "tracks": tracks}


def _mean(values) -> float:
    values = list(values)
    return round(sum(values) / max(1, len(values)), 4)


def _counts(tracks: list[dict]) -> dict:
    status = [t["status"] for t in tracks]
    return {"tracks": len(tracks), "ok": status.count("ok"), "failed": status.count("failed"),
            "missing": status.count("missing"), "title_kept": sum(t["title_kept"] for t in tracks)}


def summarize(tracks: list[dict]) -> dict:
    """Accuracy over the library: the tag side, eval and eval on the files, and their agreement."""
    names = list(dict.fromkeys(k for t in tracks for k in t["scores"]))
    exact = list(dict.fromkeys(k for t in tracks for k in t["answer_exact"]))
    tag = {k: _mean(t["scores"].get(k, 0.0) for t in tracks) for k in names}
    evals = {a: _mean(t["eval_scores"][a] for t in tracks) for a in ATTRIBUTES}
    files = {a: _mean(t["eval_on_files_scores"][a] for t in tracks) for a in ATTRIBUTES}
    return {"tag": tag, "answer_exact": {k: _mean(t["answer_exact"].get(k, 0.0) for t in tracks) for k in exact},
            "eval": evals, "eval_on_files": files,
            "tag_minus_eval_points": {a: round(100 * (tag[a] - evals[a]), 2) for a in RECORD_ATTRIBUTES},
            "same_answer_as_eval_on_files": {a: _mean(t["same_as_eval_on_files"][a] for t in tracks)
                                             for a in RECORD_ATTRIBUTES},
            "chance": {a: round(v, 4) for a, v in chance().items()}}


def table(result: dict) -> str:
    """The printed summary: per attribute the tag accuracy beside eval's, then the tag checks and the counts."""
    acc, counts, run = result["accuracy"], result["counts"], result["tag_run"]
    lines = [f"{'attribute':<22} {'tag':>6} {'eval':>6} {'eval(files)':>11} {'same ans':>8} {'chance':>6}"]
    for a in RECORD_ATTRIBUTES:
        lines.append(f"{a:<22} {acc['tag'][a]:>6.3f} {acc['eval'][a]:>6.3f} {acc['eval_on_files'][a]:>11.3f} "
                     f"{acc['same_answer_as_eval_on_files'][a]:>8.3f} {acc['chance'][a]:>6.3f}")
    for a in ("meter", "event"):
        lines.append(f"{a:<22} {'':>6} {acc['eval'][a]:>6.3f} {acc['eval_on_files'][a]:>11.3f} {'':>8} "
                     f"{acc['chance'][a]:>6.3f}")
    for name, value in acc["tag"].items():
        if name not in RECORD_ATTRIBUTES:
            lines.append(f"{name.replace('_tag', ' tag (exact)'):<22} {value:>6.3f}")
    lines.append("answers exact: " + ", ".join(f"{k} {v:.2f}" for k, v in acc["answer_exact"].items()))
    lines.append(f"{counts['tracks']} tracks: {counts['ok']} ok, {counts['failed']} failed, {counts['missing']} "
                 f"missing, title kept on {counts['title_kept']}; gamma-rt tag exit {run['exit_code']} in "
                 f"{run['wall_s']:.0f} s")
    return "\n".join(lines)


def run(bundle: Path | None, n: int, seed: int, work: Path | None, threads: int | None, out: Path,
        command: str) -> dict:
    """Measure in ``work`` (or a temporary folder), record inputs, machine and versions, write ``out`` atomically."""
    import tempfile
    from contextlib import ExitStack

    from gamma_rt.machine import describe, load_average

    with ExitStack() as stack:
        if work is None:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tag-accuracy-")))
        elif work.exists() and any(work.iterdir()):
            raise GammaError(f"--work {work}: not empty; give a new or empty folder (the library is written in it)")
        work.mkdir(parents=True, exist_ok=True)
        machine = describe(threads or 0)
        result = {"format": RESULT_FORMAT, "benchmark": "tag_accuracy", "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                  "command": command,
                  "inputs": {"tracks": n, "seed": seed, "threads": threads, "formats": FORMATS,
                             "scoring": "key exact, tempo within 4 %, instrument-set F1; tags exact against the "
                                        "template answer's tag; caption fields as eval scores them"},
                  **measure(bundle, n, seed, work, threads)}
    result["machine"] = {**machine, "load_average_end": load_average()}
    write_json(out, result)
    print(table(result))
    print(f"wrote {out}")
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gamma_rt.bench.tag_accuracy", description=__doc__, epilog=EXAMPLE,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tracks", type=int, default=20, metavar="N", help="held-out songs in the library (default 20)")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED,
                   help=f"which held-out songs (default {DEFAULT_SEED}; gamma-rt eval's default is 0)")
    p.add_argument("--bundle", type=Path, metavar="B",
                   help="bundle to tag with (default: build the trained built-in's, fp32 ONNX + F32 GGUF)")
    p.add_argument("--work", type=Path, metavar="DIR", help="new or empty folder for the bundle, library and results, "
                   "kept afterwards (default: a temporary folder)")
    p.add_argument("--threads", type=int, metavar="T", help="CPU threads for gamma-rt tag and eval (default all cores)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON result file (default {DEFAULT_OUT})")
    args = p.parse_args(argv)
    return run_module("tag_accuracy", argv, lambda command: run(args.bundle, args.tracks, args.seed, args.work,
                                                               args.threads, args.out, command))


if __name__ == "__main__":
    sys.exit(main())
