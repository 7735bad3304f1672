"""One benchmark run: every measurement of issue 5 on one bundle, written as one result JSON.

Order matters on a shared machine: the runtime's own figures are taken in this process, which never
imports torch; the PyTorch baselines run after, in a child process (bench/baselines.py), on the same
window, embeddings and thread count. Parts the bundle or tree cannot measure are listed under
``skipped`` with the reason, never silently left out.

Nothing here knows a model family: the audio side is the manifest's chain of graphs (GaMMA's four, a
flamingo's two), the decoder is whatever GGUF the bundle holds (qwen3, qwen2). How the runtime runs is one
:class:`~gamma_rt.runtime.options.RuntimeOptions` (backend, precision, threads, GPU layers, decoder),
passed down whole.
"""

from __future__ import annotations

import datetime
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from gamma_rt import machine
from gamma_rt.errors import BundleError, GammaError
from gamma_rt.manifest import Manifest
from gamma_rt.progress import track
from gamma_rt.runtime.options import RuntimeOptions

from . import audio_side, decoder_side
from .targets import evaluate

RESULT_FORMAT = "gamma-rt/bench"
RESULT_VERSION = 1
LENGTHS_S = (30.0, 240.0, 600.0)  # end-to-end inputs: one window, a 4-min song, a 10-min piece
BENCH_THREADS = 2  # bench's default, not the runtime's (all cores): results stay comparable across machines


@dataclass
class BenchOptions:
    bundle: Path
    # how the runtime runs: audio backend and precision ("auto": every precision the bundle holds is timed),
    # threads for every engine, GPU layers for every llama.cpp side (runtime, raw loop, llama-bench), and the
    # decoder of the end-to-end and throughput runs ("auto": F16 where the bundle has it, else the runtime's
    # pick). Its cache_dir must stay None: the bench times the encoders.
    runtime: RuntimeOptions = field(default_factory=lambda: RuntimeOptions(threads=BENCH_THREADS))
    baseline: Path | None = None  # the checkpoint the bundle was exported from: the PyTorch way
    audio: Path | None = None  # a user's file for the per-stage figures; synthesized music otherwise
    seconds: float | None = None  # one length instead of LENGTHS_S
    repeat: int = 3
    warmup: int = 1
    n_decode: int = 32  # tokens per decode measurement
    questions: int = 5  # per song, for the throughput workload
    skip: list[str] = field(default_factory=list)  # parts not to run (see --skip in bench/commands.py)

    def __post_init__(self):
        if self.runtime.cache_dir is not None:
            raise GammaError("--cache-dir: the bench times the encoders, and cached embeddings would skip them")

    def lengths(self) -> tuple[float, ...]:
        return (self.seconds,) if self.seconds else LENGTHS_S

    @property
    def threads(self) -> int:
        """CPU threads of every engine (the runtime's None: all cores)."""
        return self.runtime.threads or os.cpu_count() or 1

    @property
    def gpu_layers(self) -> int:
        """Decoder layers on the GPU, as the runtime resolves the option (None: all where llama.cpp can)."""
        from gamma_rt.runtime.decoder import gpu_layers_for

        return gpu_layers_for(self.runtime.gpu_layers)


def run_bench(opts: BenchOptions) -> dict:
    """Measure, and return the result as a JSON-ready dict (see ``docs`` in bench/report.py for fields)."""
    manifest = Manifest.load(opts.bundle)
    if opts.baseline is not None and "baselines" not in opts.skip:
        check_baseline(opts.bundle, manifest, opts.baseline)
    result: dict = {
        "format": RESULT_FORMAT,
        "format_version": RESULT_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine.describe(opts.threads),
        "inputs": _inputs(opts, manifest),
        "stages": {},
        "audio_side": {},
        "decoder": {},
        "end_to_end": {},
        "throughput": {},
        "skipped": {},
    }
    skipped = result["skipped"]
    with tempfile.TemporaryDirectory(prefix="gamma-bench-") as scratch, machine.DeviceMemoryWatch() as device:
        scratch = Path(scratch)
        steps = ["audio side", "decoder", "end to end", "throughput", "PyTorch baselines"]
        for step in track(steps, description="benchmarking"):
            if step == "audio side":
                mel = _audio_side(opts, manifest, result)
            elif step == "decoder":
                embeddings = _decoder(opts, manifest, result)
            elif step == "end to end":
                _end_to_end(opts, scratch, result)
            elif step == "throughput":
                _throughput(opts, scratch, result)
            elif step == "PyTorch baselines":
                _baselines(opts, scratch, mel, embeddings, result)
    result["memory"] = {"runtime_peak_rss_mib": machine.peak_rss_mib(),
                        "peak_device_mib": device.peak_mib if device.peak_mib is not None else machine.peak_device_mib(),
                        **result.pop("_baseline_memory", {})}
    if device.source:
        result["memory_notes"] = {"peak_device_mib": device.source}
    result.pop("_audio_files", None)
    result["machine"]["load_average_end"] = machine.load_average()
    result["ratios"] = ratios(result)
    result["targets"] = [v.to_dict() for v in evaluate(result["ratios"])]
    if not skipped:
        del result["skipped"]
    return result


def check_baseline(bundle: Path, manifest: Manifest, checkpoint: Path) -> None:
    """The checkpoint must be the kind the bundle was exported from, as far as its config.json says: the
    family that reads it (export/families' registry) is the bundle's ``source.family``. A mismatch is one
    line of error before anything is measured."""
    from gamma_rt.export.families import claimant

    config = Path(checkpoint) / "config.json"
    if not config.is_file():
        raise GammaError(f"{config}: missing; --baseline takes the checkpoint folder the bundle was exported from")
    data = json.loads(config.read_text())
    model_type = data.get("model_type")
    family = manifest.source.get("family", "unknown")
    reader = claimant(data, str(config))
    if reader is None or reader.name != family:
        raise GammaError(f"--baseline {checkpoint}: config.json's model_type is {model_type!r}, but {bundle} is a "
                         f"{family} bundle (audio graphs {', '.join(manifest.audio.components)}); give the "
                         "checkpoint it was exported from")


def write_result(result: dict, out: Path) -> Path:
    """``out/bench-<preset>-<time>.json``; returns its path."""
    out.mkdir(parents=True, exist_ok=True)
    stamp = result["created"].replace(":", "").replace("-", "")[:15]
    path = out / f"bench-{result['inputs']['preset']}-{stamp}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    return path


# --- parts ---------------------------------------------------------------------------------------


def _inputs(opts: BenchOptions, manifest: Manifest) -> dict:
    d = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items() if k != "runtime"}
    d["runtime"] = opts.runtime.to_dict()
    d["threads"], d["gpu_layers"] = opts.threads, opts.gpu_layers
    d["bundle"] = Path(opts.bundle).name  # a name, not a machine path
    d["baseline"] = Path(opts.baseline).name if opts.baseline else None
    d["audio"] = Path(opts.audio).name if opts.audio else "synthesized music (gamma_rt/synth.py)"
    d["lengths_s"] = list(opts.lengths())
    d["preset"] = manifest.source.get("preset", "unknown")
    d["family"] = manifest.source.get("family", "gamma")
    d["audio_chain"] = list(manifest.audio.components)
    d["llm_arch"] = manifest.llm.arch
    d["tokens_per_window"] = manifest.audio.tokens_per_window
    d["components"] = {name: {"precision": c.precision, "bytes": c.bytes} for name, c in manifest.components.items()}
    return d


def _window_samples(opts: BenchOptions, audio_cfg) -> np.ndarray:
    """The first full window of the user's file, or of synthesized music."""
    n = audio_cfg.window_samples
    if opts.audio is None:
        from gamma_rt.synth import Music, synthesize

        return synthesize(Music(audio_cfg.window_seconds, audio_cfg.sample_rate))[:n]
    from gamma_rt.runtime.audio import load_audio

    samples = load_audio(opts.audio, audio_cfg.sample_rate)[:n]
    return np.pad(samples, (0, n - len(samples))).astype(np.float32)


def _audio_side(opts: BenchOptions, manifest: Manifest, result: dict) -> np.ndarray:
    """Front end and every graph of the chain, at each precision; returns the window's mel for the baselines."""
    front, feeds = audio_side.time_front_end(_window_samples(opts, manifest.audio), manifest, opts.repeat,
                                             opts.warmup)
    result["stages"]["front_end"] = front.to_dict()
    runtime = opts.runtime.replace(threads=opts.threads)
    backends = {}
    for precision in audio_side.precisions(manifest, runtime.precision):
        way, reason, timings = audio_side.time_backend(opts.bundle, manifest, runtime, precision, feeds,
                                                       opts.repeat, opts.warmup)
        result["audio_side"][way] = {k: v.to_dict() for k, v in timings.items()}
        backends[way] = reason
    if not backends:
        raise BundleError(f"{opts.bundle}: no complete set of ONNX audio graphs; run `gamma-rt export onnx` first")
    result["inputs"]["audio_backends"] = backends
    shown = next((w for w in result["audio_side"] if w.endswith("-fp32")), next(iter(result["audio_side"])))
    result["stages"].update(result["audio_side"][shown])
    return feeds["mel"]


RUNTIME_DECODER_TYPES = ("f16", "f32")  # GGUF types the runtime is timed on, each against the raw loop; f16 first:
# the deployment type, the one the end-to-end runs use, and the one the stage table shows


def _decoder(opts: BenchOptions, manifest: Manifest, result: dict) -> np.ndarray:
    variants = decoder_side.gguf_variants(manifest)
    if not variants:
        raise BundleError(f"{opts.bundle}: no GGUF decoder in the manifest; run `gamma-rt export gguf` first")
    embeddings = decoder_side.audio_embeddings(manifest.audio.tokens_per_window, manifest.llm.n_embd)
    args = (embeddings, opts.n_decode, opts.threads, opts.repeat, opts.warmup)
    gpu = {"n_gpu_layers": opts.gpu_layers}
    for gguf_type, name in variants.items():
        path = Path(opts.bundle) / manifest.component(name).file
        kv_type = decoder_side.default_kv_type(gguf_type)
        if gguf_type in RUNTIME_DECODER_TYPES:  # the runtime and the raw loop, same settings, interleaved
            pair = decoder_side.runtime_against_raw(path, *args, kv_type=kv_type, **gpu)
            result["decoder"][f"llama.cpp-raw-{gguf_type}"] = plain_figures(pair["raw"])
            result["decoder"][f"runtime-{gguf_type}"] = plain_figures(pair["runtime"])
        else:
            raw = decoder_side.raw_llama_loop(path, *args, kv_type=kv_type, **gpu)
            result["decoder"][f"llama.cpp-raw-{gguf_type}"] = plain_figures(raw)
        if "llama_bench" in opts.skip:
            result["skipped"]["llama-bench"] = "skipped on request (--skip llama_bench)"
            continue
        bench = decoder_side.llama_bench_figures(path, len(embeddings), opts.n_decode, opts.threads, opts.repeat,
                                                   opts.gpu_layers)
        if "absent" in bench:
            result["skipped"]["llama-bench"] = bench["absent"]
        else:
            result["decoder"][f"llama-bench-{gguf_type}"] = bench
    shown = next((f"runtime-{t}" for t in RUNTIME_DECODER_TYPES if f"runtime-{t}" in result["decoder"]), None)
    if shown is None:
        raise BundleError(f"{opts.bundle}: no F16 or F32 GGUF decoder to time the runtime on")
    result["stages"]["prefill_per_window"] = result["decoder"][shown]["prefill_ms"]
    result["stages"]["decode_ms_per_token"] = result["decoder"][shown]["decode_ms_per_token"]
    return embeddings


def plain_figures(figures: dict) -> dict:
    """Stats as dicts, other values (settings) as they are."""
    return {k: v.to_dict() if hasattr(v, "to_dict") else v for k, v in figures.items()}


def _end_to_end(opts: BenchOptions, scratch: Path, result: dict) -> None:
    if "end_to_end" in opts.skip:
        result["skipped"]["end_to_end"] = "skipped on request (--skip end_to_end)"
        return
    from . import end_to_end

    end_to_end.measure_lengths(opts, scratch, result)


def _throughput(opts: BenchOptions, scratch: Path, result: dict) -> None:
    if "throughput" in opts.skip:
        result["skipped"]["throughput"] = "skipped on request (--skip throughput)"
        return
    from . import end_to_end

    result["throughput"] = end_to_end.tagging_throughput(opts, scratch)


def _baselines(opts: BenchOptions, scratch: Path, mel: np.ndarray, embeddings: np.ndarray, result: dict) -> None:
    if opts.baseline is None or "baselines" in opts.skip:
        result["skipped"]["baselines"] = "no --baseline CKPT given" if opts.baseline is None else "skipped on request"
        return
    np.save(scratch / "mel.npy", mel)
    np.save(scratch / "embeddings.npy", embeddings)
    request = {"checkpoint": str(Path(opts.baseline).resolve()), "mel": str(scratch / "mel.npy"),
               "embeddings": str(scratch / "embeddings.npy"), "threads": opts.threads, "repeat": opts.repeat,
               "warmup": opts.warmup, "n_decode": opts.n_decode, "audio_files": _reference_files(opts, result),
               "questions": opts.questions}
    from .baselines import run_baselines

    answer = run_baselines(request)
    result["audio_side"]["pytorch-eager"] = answer["audio_side"]
    result["decoder"]["transformers"] = answer["decoder"]
    ref = answer["reference_pipeline"]
    if "absent" in ref:
        result["skipped"]["reference_pipeline"] = ref["absent"]
    else:
        result["end_to_end"]["pytorch-reference"] = ref
    result["_baseline_memory"] = {"pytorch_peak_rss_mib": answer["memory"]["peak_rss_mib"],
                                  "pytorch_peak_device_mib": answer["memory"]["peak_device_mib"]}


def _reference_files(opts: BenchOptions, result: dict) -> dict[str, str]:
    """The end-to-end files the PyTorch reference runs on: all, or all but the 10 min one on request."""
    files = result.get("_audio_files", {})
    if "reference_10min" not in opts.skip:
        return files
    result["skipped"]["reference_10min"] = "skipped on request: the PyTorch reference pipeline on the 10 min input"
    return {k: v for k, v in files.items() if float(k) < 600}


# --- ratios --------------------------------------------------------------------------------------


def _median(block: dict | None, key: str) -> float | None:
    if not block or key not in block:
        return None
    v = block[key]
    return v["median"] if isinstance(v, dict) else v


def audio_side_ms(block: dict | None) -> float | None:
    """Sum of the audio stages' medians (every graph of the chain) for one way of running them, ms per window."""
    if not block:
        return None
    return sum(_median(block, s) for s in block)


def ratios(result: dict) -> dict[str, float | None]:
    """The figures the targets judge, each a ratio of two measurements of this run (None: not measured)."""
    audio, dec, e2e, tp = result["audio_side"], result["decoder"], result["end_to_end"], result.get("throughput", {})

    def div(a, b):
        return a / b if a is not None and b else None

    r: dict[str, float | None] = {}
    r["audio_eager_over_ort"] = div(audio_side_ms(audio.get("pytorch-eager")), audio_side_ms(audio.get("onnxruntime-fp32")))
    r["audio_eager_over_ort_fp16"] = div(audio_side_ms(audio.get("pytorch-eager")),
                                         audio_side_ms(audio.get("onnxruntime-fp16")))
    hf = _median(dec.get("transformers"), "decode_ms_per_token")
    # the target compares llama.cpp F16 (its unquantized deployment type) with transformers; every type is listed
    for key, block in dec.items():
        if key.startswith("llama.cpp-raw-"):
            r[f"decode_{key.removeprefix('llama.cpp-raw-')}_over_transformers"] = div(
                hf, _median(block, "decode_ms_per_token"))
    preferred = next((t for t in ("f16", "f32") if f"llama.cpp-raw-{t}" in dec), None)
    r["decode_llamacpp_over_transformers"] = r.get(f"decode_{preferred}_over_transformers") if preferred else None
    for t in RUNTIME_DECODER_TYPES:
        if f"runtime-{t}" in dec:
            r[f"decode_runtime_over_raw_{t}"] = div(_median(dec.get(f"llama.cpp-raw-{t}"), "decode_ms_per_token"),
                                                    _median(dec[f"runtime-{t}"], "decode_ms_per_token"))
    r["decode_runtime_over_raw"] = next((r[f"decode_runtime_over_raw_{t}"] for t in RUNTIME_DECODER_TYPES
                                         if f"decode_runtime_over_raw_{t}" in r), None)
    # the Pipeline's own rows (``runtime``; overhead from ``runtime-sequential``, where stages do not overlap),
    # or the runtime's parts as an older run streamed them itself (``runtime-parts``)
    runtime_e2e = e2e.get("runtime") or e2e.get("runtime-parts") or {}
    first, last = runtime_e2e.get("30s"), runtime_e2e.get("600s")
    rows = [*e2e.get("runtime-sequential", {}).values(), *runtime_e2e.values()]
    r["orchestration_overhead"] = max((v["overhead"] for v in rows if v.get("overhead") is not None), default=None)
    r["ttft_10min_over_30s"] = div(_median(last, "ttft_ms"), _median(first, "ttft_ms"))
    r["throughput_prefix_reuse"] = tp.get("speedup")
    return r
