"""Task accuracy of every export and quantization path of a GaMMA checkpoint against its PyTorch model (issue 16).

One run builds one bundle from CKPT holding every path's files: the audio graphs as ONNX fp32 and fp16, the
decoder as GGUF F32 and F16 (``gamma-rt export``) and as Q8_0, Q6_K, Q4_K_M and Q4_0 through llama.cpp's own
quantizer from the F32 (``gamma-rt quantize gguf``). N held-out labelled songs are asked the five scored
questions of ``gamma-rt eval`` through the PyTorch checkpoint and through each path, the runtime choosing
the path's files with ``RuntimeOptions(precision=..., decoder=...)``, and scored as eval scores them.

Per path: accuracy per attribute, its difference from PyTorch in points (100 x the accuracy difference),
the worst of those, whether every attribute is within 1 point (the issue's target, held from ONNX fp32 down
to Q8_0 and for the embedding cache), the share of replies word for word PyTorch's, and the bytes of the
files the path runs. Each GGUF's tensor types are read back from the file: k-quants need rows that are a
multiple of 256 and llama.cpp falls back for narrower tensors, so a small model's "Q4_K_M" is mostly not
Q4_K. "cache on" asks the songs twice with a fresh cache folder: the first pass encodes and writes every
window, the second must read every window from the cache and give the same answers; "cache off" runs no
cache. Paths that name the same runtime configuration (ONNX fp32, GGUF F32 and cache off are all fp32
graphs with the F32 decoder) share one run, as greedy decoding is deterministic.

With N songs an accuracy moves in steps of 100/N points, so the 1-point target needs N >= 100 to be read.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from gamma_rt.errors import GammaError
from gamma_rt.evaluation import MAX_ANSWER_TOKENS, accuracy, checkpoint_scored_replies, training_record
from gamma_rt.synthetic_tasks import ATTRIBUTES, QUESTION_OF, chance, eval_song

from .entry import run_module, write_json

RESULT_FORMAT = "gamma-rt-task-fidelity/1"
DEFAULT_OUT = Path("bench") / "results" / "task_fidelity.json"
TARGET_POINTS = 1.0  # issue 16: every attribute within 1 point of PyTorch, down to Q8_0
QUANT_TYPES = ("Q8_0", "Q6_K", "Q4_K_M", "Q4_0")

EXAMPLE = """\
example:
  python -m gamma_rt.bench.task_fidelity gamma_rt/builtin --songs 200 --threads 2
  gamma-rt bench fidelity gamma_rt/builtin --songs 200   # the same through gamma-rt bench (--threads 2 there)
"""


@dataclass(frozen=True)
class ExportPath:
    """One way from the checkpoint to answers: which audio graphs and which decoder the runtime runs."""

    name: str
    precision: str  # ONNX audio graphs, "fp32" | "fp16"
    decoder: str  # the manifest's GGUF component
    cache: bool = False  # ask twice through a fresh embedding cache
    held_to_target: bool = True  # the 1-point target applies (ONNX fp32 down to Q8_0, the cache)

    @property
    def run_key(self) -> tuple:
        return self.precision, self.decoder, self.cache


PATHS = (
    ExportPath("onnx-fp32", "fp32", "decoder"),
    ExportPath("onnx-fp16", "fp16", "decoder"),
    ExportPath("gguf-f32", "fp32", "decoder"),
    ExportPath("gguf-f16", "fp32", "decoder.f16"),
    ExportPath("gguf-q8_0", "fp32", "decoder.q8_0"),
    ExportPath("gguf-q6_k", "fp32", "decoder.q6_k", held_to_target=False),
    ExportPath("gguf-q4_k_m", "fp32", "decoder.q4_k_m", held_to_target=False),
    ExportPath("gguf-q4_0", "fp32", "decoder.q4_0", held_to_target=False),
    ExportPath("cache-off", "fp32", "decoder"),
    ExportPath("cache-on", "fp32", "decoder", cache=True),
)


def _say(text: str) -> None:
    print(f"task_fidelity: {text}", file=sys.stderr, flush=True)


def check_checkpoint(checkpoint: Path) -> None:
    config = checkpoint / "config.json"
    if not config.is_file():
        raise GammaError(f"{checkpoint}: not a checkpoint folder (no config.json)")
    family = json.loads(config.read_text()).get("family")
    if family != "gamma":
        raise GammaError(f"{config}: family is {family!r}; the task fidelity table is for GaMMA checkpoints")


@contextmanager
def work_folder(work: Path | None):
    """``work`` (new or empty, kept afterwards) or a temporary folder removed at the end."""
    if work is None:
        with tempfile.TemporaryDirectory(prefix="task-fidelity-") as scratch:
            yield Path(scratch)
        return
    if work.exists() and any(work.iterdir()):
        raise GammaError(f"--work {work}: not empty; give a new or empty folder (a bundle is built in it)")
    work.mkdir(parents=True, exist_ok=True)
    yield work


def build_bundle(checkpoint: Path, bundle: Path, threads: int | None, say=_say) -> dict[str, float]:
    """Export and quantize every path's files into ``bundle``; seconds per step."""
    from gamma_rt.export.gguf_export import export_gguf
    from gamma_rt.export.onnx_export import export_onnx
    from gamma_rt.quant.gguf_quant import quantize

    steps = [("onnx fp32", lambda: export_onnx(checkpoint, bundle, "fp32")),
             ("onnx fp16", lambda: export_onnx(checkpoint, bundle, "fp16")),
             ("gguf f32", lambda: export_gguf(checkpoint, bundle, "f32", progress=lambda x, **_: x)),
             ("gguf f16", lambda: export_gguf(checkpoint, bundle, "f16", progress=lambda x, **_: x))]
    # quantize() takes the bundle's F32 decoder as the source of every type
    steps += [(f"quantize {q}", lambda q=q: quantize(bundle, q, n_threads=threads)) for q in QUANT_TYPES]
    seconds = {}
    for name, step in steps:
        start = time.perf_counter()
        step()
        seconds[name] = round(time.perf_counter() - start, 2)
        say(f"built {name} in {seconds[name]:.1f} s")
    return seconds


def path_files(bundle: Path, path: ExportPath) -> dict[str, int]:
    """Bytes of every file the path runs: its audio graphs (with external data) and its decoder GGUF."""
    from gamma_rt.components import component_key
    from gamma_rt.manifest import Manifest

    manifest = Manifest.read(bundle)
    names = [component_key(graph, path.precision) for graph in manifest.audio.components] + [path.decoder]
    files = {}
    for name in names:
        component = manifest.component(name)
        for file in (component.file, *component.external_data):
            files[file] = (bundle / file).stat().st_size
    return files


def gguf_tensor_types(gguf_file: Path) -> dict:
    """What the file really holds: tensor count and bytes per GGML type, and each tensor's type."""
    import gguf

    tensors = gguf.GGUFReader(gguf_file).tensors
    counts = Counter(t.tensor_type.name for t in tensors)
    type_bytes = Counter()
    for t in tensors:
        type_bytes[t.tensor_type.name] += int(t.n_bytes)
    return {"bytes": gguf_file.stat().st_size, "counts": dict(counts.most_common()),
            "type_bytes": dict(type_bytes.most_common()), "by_tensor": {t.name: t.tensor_type.name for t in tensors}}


def runtime_replies(bundle: Path, songs, options) -> tuple[list[dict[str, str]], dict]:
    """The replies through one runtime configuration, and what ran (backend, graphs, decoder, cache windows)."""
    from gamma_rt.evaluation import pipeline_replies
    from gamma_rt.runtime.pipeline import Pipeline

    with Pipeline.open(bundle, options) as pipe:
        replies = pipeline_replies(pipe, songs)
        ran = {"backend": pipe.backend.name, "precision": pipe.backend.precision,
               "decoder_file": pipe.decoder_file.name}
        if pipe.cache is not None:
            ran |= {"cached_windows": pipe.cache.hits, "encoded_windows": pipe.cache.misses}
    return replies, ran


def pytorch_replies(checkpoint: Path, songs, threads: int | None) -> list[dict[str, str]]:
    import torch

    if threads:
        torch.set_num_threads(threads)
    return checkpoint_scored_replies(checkpoint, songs)


def score_row(songs, replies, reference: dict | None) -> dict:
    """Accuracy per attribute; against the PyTorch row, points per attribute, the worst, and reply agreement."""
    acc = accuracy(songs, replies)
    row = {"accuracy": acc}
    if reference is not None:
        points = {a: round(100 * (acc[a] - reference["accuracy"][a]), 2) for a in ATTRIBUTES}
        same = sum(r[a] == p[a] for r, p in zip(replies, reference["replies"]) for a in ATTRIBUTES)
        row |= {"points_vs_pytorch": points, "worst_points": min(points.values()),
                "within_1_point": all(abs(p) <= TARGET_POINTS for p in points.values()),
                "same_replies_as_pytorch": round(same / max(1, len(replies) * len(ATTRIBUTES)), 4)}
    return row


def run_path(path: ExportPath, bundle: Path, cache_dir: Path, songs, base_options) -> dict:
    """The path's replies and what ran; a cache path asks twice and records both passes."""
    options = base_options.replace(precision=path.precision, decoder=path.decoder,
                                   cache_dir=cache_dir if path.cache else None)
    replies, ran = runtime_replies(bundle, songs, options)
    if not path.cache:
        return {"replies": replies, "ran": ran}
    again, ran_again = runtime_replies(bundle, songs, options)
    return {"replies": again, "ran": ran_again, "first_pass": ran, "same_replies_as_first_pass": again == replies,
            "cache_bytes": sum(f.stat().st_size for f in cache_dir.rglob("*.npy"))}


def pytorch_row(checkpoint: Path, songs, threads: int | None) -> dict:
    """The reference row: the checkpoint's replies and accuracy, and the bytes of its weights."""
    start = time.perf_counter()
    row = {"path": "pytorch", "replies": pytorch_replies(checkpoint, songs, threads)}
    row |= score_row(songs, row["replies"], None)
    row["files"] = {f.name: f.stat().st_size for f in sorted(checkpoint.glob("*.safetensors"))}
    row |= {"bytes": sum(row["files"].values()), "seconds": round(time.perf_counter() - start, 1)}
    return row


def path_rows(bundle: Path, cache_dir: Path, songs, options, reference: dict, say=_say) -> list[dict]:
    """One row per :data:`PATHS` entry, each with its replies; paths of one configuration share its run."""
    rows, runs = [], {}
    for i, path in enumerate(PATHS, start=1):
        start = time.perf_counter()
        shared = runs.get(path.run_key)
        outcome = shared or run_path(path, bundle, cache_dir, songs, options)
        runs.setdefault(path.run_key, {**outcome, "first_row": path.name})
        row = {"path": path.name, "audio": f"onnx {path.precision}", "decoder": path.decoder,
               "cache": "on" if path.cache else "off", "held_to_target": path.held_to_target,
               **{k: v for k, v in outcome.items() if k != "first_row"},
               **score_row(songs, outcome["replies"], reference),
               "files": path_files(bundle, path), "seconds": round(time.perf_counter() - start, 1)}
        row["bytes"] = sum(row["files"].values())
        if shared:
            row["run_shared_with"] = shared["first_row"]
        rows.append(row)
        say(f"[{i}/{len(PATHS)}] {path.name}: {_accuracy_line(row)}"
            + (f" (the run of {shared['first_row']})" if shared else f" in {row['seconds']:.0f} s"))
    cache_off = next(r for r in rows if r["path"] == "cache-off")
    for row in rows:
        if row["cache"] == "on":
            row["same_replies_as_cache_off"] = row["replies"] == cache_off["replies"]
    return rows


def measure(checkpoint: Path, n_songs: int, seed: int = 0, options=None, work: Path | None = None,
            say=_say) -> dict:
    """The whole table: a PyTorch row, then one row per :data:`PATHS` entry, the GGUFs' tensor types, a summary."""
    from gamma_rt.runtime.options import RuntimeOptions

    checkpoint = Path(checkpoint)
    check_checkpoint(checkpoint)
    if n_songs < 1:
        raise GammaError(f"--songs {n_songs}: ask at least one song")
    options = options or RuntimeOptions()
    songs = [eval_song(i, seed) for i in range(n_songs)]
    with work_folder(work) as folder:
        bundle = folder / "bundle"
        build_s = build_bundle(checkpoint, bundle, options.threads, say)
        reference = pytorch_row(checkpoint, songs, options.threads)
        say(f"[0/{len(PATHS)}] pytorch: {_accuracy_line(reference)} in {reference['seconds']:.0f} s")
        rows = path_rows(bundle, folder / "cache", songs, options, reference, say)
        ggufs = {f.name: gguf_tensor_types(f) for f in sorted(bundle.glob("*.gguf"))}
    for row in rows:
        # the replies themselves stay out of the JSON (songs x 5 x 11 rows): only where a path differs
        row["replies_unlike_pytorch"] = [{"song": i, "attribute": a, "pytorch": p[a], "reply": r[a]}
                                         for i, (r, p) in enumerate(zip(row.pop("replies"), reference["replies"]))
                                         for a in ATTRIBUTES if r[a] != p[a]]
        row["decoder_tensor_types"] = ggufs[row["ran"]["decoder_file"]]["counts"]
    example = {"song": songs[0].__dict__, "pytorch": reference.pop("replies")[0]}
    rows.insert(0, reference)
    return {"rows": rows, "gguf_files": ggufs, "build_seconds": build_s, "summary": summarize(rows, n_songs),
            "chance": {a: round(v, 4) for a, v in chance().items()}, "example": example}


def summarize(rows: list[dict], n_songs: int) -> dict:
    held = [r for r in rows if r.get("held_to_target")]
    by_name = {r["path"]: r for r in rows}
    return {"target": f"every attribute within {TARGET_POINTS:g} point of PyTorch: "
                      + ", ".join(r["path"] for r in held),
            "target_met": all(r["within_1_point"] for r in held),
            "missed": [r["path"] for r in held if not r["within_1_point"]],
            "worst_points": {r["path"]: r["worst_points"] for r in rows if "worst_points" in r},
            "q4_k_m_worst_points": by_name["gguf-q4_k_m"]["worst_points"],
            "q4_0_worst_points": by_name["gguf-q4_0"]["worst_points"],
            "resolution_points": round(100 / n_songs, 2)}


def _accuracy_line(row: dict) -> str:
    points = row.get("points_vs_pytorch")
    return " ".join(f"{a} {row['accuracy'][a]:.3f}" + (f" ({points[a]:+.1f})" if points else "") for a in ATTRIBUTES)


def _types_cell(record: dict) -> str:
    """``17 Q5_0, 2 Q8_0, 2 Q4_K, 1 Q6_K`` (norms and other 1-D F32 tensors left out)."""
    counts = {t: n for t, n in record["counts"].items() if t != "F32"} or record["counts"]
    return ", ".join(f"{n} {t}" for t, n in counts.items())


def _gguf_type(component: str) -> str:
    """``decoder`` -> ``F32``, ``decoder.q4_k_m`` -> ``Q4_K_M``."""
    return "F32" if component == "decoder" else component.split(".", 1)[1].upper()


def table(result: dict) -> str:
    """The markdown table: accuracy (points vs PyTorch) per attribute, worst points, target, bytes; a footnote."""
    head = ["path", "audio", "decoder (tensor types)", "cache", *ATTRIBUTES, "worst pts", "≤1 pt", "bytes"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(_cells(row, result["gguf_files"])) + " |" for row in result["rows"]]
    s = result["summary"]
    target = "yes" if s["target_met"] else f"no (missed: {', '.join(s['missed'])})"
    lines += ["", "¹ the same run as an earlier row (same graphs and decoder). "
              f"One song of {result['inputs']['songs']} is {s['resolution_points']:g} points. Target met: {target}; "
              f"Q4_K_M worst {s['q4_k_m_worst_points']:+.1f} pts, Q4_0 worst {s['q4_0_worst_points']:+.1f} pts."]
    return "\n".join(lines)


def _cells(row: dict, ggufs: dict) -> list[str]:
    points = row.get("points_vs_pytorch")
    accuracy = [f"{row['accuracy'][a]:.3f}" + (f" ({points[a]:+.1f})" if points else "") for a in ATTRIBUTES]
    if not points:  # the PyTorch row
        return [row["path"], "torch", "PyTorch", "", *accuracy, "", "reference", str(row["bytes"])]
    types = _types_cell(ggufs[row["ran"]["decoder_file"]])
    within = ("yes" if row["within_1_point"] else "no") + ("" if row["held_to_target"] else " (not held)")
    name = row["path"] + (" ¹" if "run_shared_with" in row else "")
    return [name, row["audio"], f"{_gguf_type(row['decoder'])}: {types}", row["cache"], *accuracy,
            f"{row['worst_points']:+.1f}", within, str(row["bytes"])]


def run(checkpoint: Path, n_songs: int, seed: int, options, work: Path | None, out: Path, command: str) -> dict:
    """Measure, record the inputs, the machine and the versions, write ``out`` atomically, print the table."""
    from gamma_rt.export.bundle import tool_versions
    from gamma_rt.machine import describe, load_average

    machine = describe(options.threads or 0)
    result = {"format": RESULT_FORMAT, "benchmark": "task_fidelity", "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "command": command,
              "inputs": {"checkpoint": str(checkpoint), "songs": n_songs, "seed": seed,
                         "threads": options.threads, "max_answer_tokens": MAX_ANSWER_TOKENS,
                         "questions": {a: QUESTION_OF[a].text for a in ATTRIBUTES},
                         "scoring": "key exact, tempo within 4 %, meter exact, instrument-set F1, event within 2 s",
                         "training": training_record(checkpoint)},
              **measure(checkpoint, n_songs, seed, options, work)}
    result["machine"] = {**machine, "load_average_end": load_average()}
    result["tools"] = tool_versions()
    write_json(out, result)
    print(table(result))
    print(f"wrote {out}")
    return result


def add_arguments(p) -> None:
    """``--songs``, ``--seed`` and ``--work``, on a parser or an argument group."""
    p.add_argument("--songs", type=int, metavar="N", help="held-out songs asked through every path")
    p.add_argument("--seed", type=int, default=0, help="which held-out songs (default 0)")
    p.add_argument("--work", type=Path, metavar="DIR", help="new or empty folder to build the bundle and cache in, "
                   "kept afterwards (default: a temporary folder)")


BENCH_EPILOG = """
gamma-rt bench fidelity CKPT --songs N: task accuracy of every export and quantization path vs PyTorch
  One bundle is built from CKPT with ONNX fp32/fp16 graphs and F32, F16, Q8_0, Q6_K, Q4_K_M, Q4_0 decoders;
  N held-out songs are asked the scored questions through each and through PyTorch, and the embedding cache
  on and off is compared too. Writes OUT/task_fidelity.json and prints the table
  (also: python -m gamma_rt.bench.task_fidelity --help).

  gamma-rt bench fidelity gamma_rt/builtin --songs 200 --threads 2
"""


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    """The ``bench fidelity`` flags on the bench parser (its positional BUNDLE is then the word fidelity)."""
    p.epilog = (p.epilog or "") + BENCH_EPILOG
    for action in p._actions:
        if action.dest == "target":  # bench serve's URL|BUNDLE positional, which fidelity reads as CKPT
            action.metavar += "|CKPT"
            action.help += "; with `bench fidelity`: the checkpoint folder"
    add_arguments(p.add_argument_group("bench fidelity (gamma-rt bench fidelity CKPT)"))


def cmd_bench_fidelity(args) -> int:
    """``gamma-rt bench fidelity CKPT``: bench's --threads, --backend and --gpu-layers apply, --out is a folder."""
    from gamma_rt.runtime.options import RuntimeOptions

    if not args.target:
        raise GammaError("bench fidelity needs a checkpoint: gamma-rt bench fidelity CKPT --songs N")
    if args.songs is None:
        raise GammaError("bench fidelity needs --songs N")
    for flag, default in (("precision", "auto"), ("decoder", "auto"), ("cache_dir", None)):
        if getattr(args, flag) != default:
            raise GammaError(f"--{flag.replace('_', '-')}: bench fidelity runs every audio precision, decoder "
                             "and the cache itself")
    command = "gamma-rt " + " ".join(sys.argv[1:])
    run(Path(args.target), args.songs, args.seed, RuntimeOptions.from_args(args), args.work,
        args.out / DEFAULT_OUT.name, command)
    return 0


def main(argv: list[str] | None = None) -> int:
    from gamma_rt.runtime.options import RuntimeOptions

    p = argparse.ArgumentParser(prog="python -m gamma_rt.bench.task_fidelity", description=__doc__, epilog=EXAMPLE,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path, metavar="CKPT", help="GaMMA checkpoint folder (config.json, safetensors)")
    add_arguments(p)
    p.add_argument("--threads", type=int, metavar="T", help="CPU threads for the runtime, the quantizer and "
                   "PyTorch (default: all cores)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON result file (default {DEFAULT_OUT})")
    args = p.parse_args(argv)
    if args.songs is None:
        p.error("--songs N is required")
    options = RuntimeOptions(threads=args.threads)
    return run_module("task_fidelity", argv, lambda command: run(args.checkpoint, args.songs, args.seed, options,
                                                                args.work, args.out, command))


if __name__ == "__main__":
    sys.exit(main())
