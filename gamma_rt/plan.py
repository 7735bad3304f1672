"""``gamma-rt plan``: will a bundle fit on a device, and at which precisions?

Memory of one running pipeline, in bytes, summed from four parts:

- audio side: weights of every graph in the bundle's audio chain (``manifest.audio.chain``: GaMMA's two
  experts, fusion and projector; a flamingo's encoder and projector) at the engine precision, plus the
  activations of one 30 s window (attention scores of one encoder layer, a few hidden-state copies and the
  FFN intermediate) for every encoder at once, since the encoders that read the mel run concurrently;
- decoder weights: the GGUF's size for each type (measured when the bundle holds that type, otherwise
  scaled from one it holds by bits per weight);
- KV cache: 2 (K and V) x layers x context x KV heads x head_dim x 2 bytes (f16), for the context the
  audio needs (25 tokens/s) plus room for the prompt and the answer;
- runtime overhead: CUDA context, TensorRT/llama.cpp libraries and Python (a fixed 1 GB), and llama.cpp's
  logits buffer for a 512-token batch.

Jetson boards share their memory with the OS, so a named board's budget is its memory less what the OS
and desktop keep. Every number is an estimate with 10 % headroom; the table shows the parts.

Examples:
  gamma-rt plan bundle --device "AGX Orin 64GB"
  gamma-rt plan --preset full --device "Orin NX 16GB" --seconds 300
"""

from __future__ import annotations

import argparse
import math
import re
from dataclasses import dataclass
from pathlib import Path

from gamma_rt.errors import BundleError, GammaError
from gamma_rt.manifest import Manifest

GB = 1e9
RUNTIME_OVERHEAD = 1.0 * GB
N_UBATCH = 512
PROMPT_TOKENS = 256  # chat template, system prompt, the question
ANSWER_TOKENS = 512
HEADROOM = 0.9  # use at most 90 % of the budget
KV_BYTES = 2  # f16 cache
# bits per weight of whole 8B-class models per GGUF type (Q4_K_M mixes Q4_K and Q6_K tensors)
GGUF_BITS = {"f32": 32.0, "f16": 16.0, "bf16": 16.0, "q8_0": 8.5, "q6_k": 6.56, "q5_k_m": 5.69, "q4_k_m": 4.89,
             "q3_k_m": 3.91, "q2_k": 3.0}
# engine weight bytes per parameter; int8/fp8 keep norms and a few layers in fp16, hence not 1.0
AUDIO_BYTES = {"fp32": 4.0, "fp16": 2.0, "bf16": 2.0, "int8": 1.1, "fp8": 1.1}
ACT_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 2, "fp8": 2}


@dataclass(frozen=True)
class Device:
    name: str
    memory_gb: float
    reserved_gb: float  # kept by the OS/desktop (Jetson: unified memory) or the driver (discrete GPU)

    @property
    def budget(self) -> float:
        return (self.memory_gb - self.reserved_gb) * GB * HEADROOM


DEVICES = {
    "orin nano 8gb": Device("Jetson Orin Nano 8GB", 8, 1.5),
    "orin nx 16gb": Device("Jetson Orin NX 16GB", 16, 1.5),
    "agx orin 64gb": Device("Jetson AGX Orin 64GB", 64, 2.0),
}


def device_named(text: str) -> Device:
    key = " ".join(text.lower().replace("-", " ").split())
    if key in DEVICES:
        return DEVICES[key]
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*gb", key)
    if m:
        return Device(f"GPU with {m.group(1)} GB", float(m.group(1)), 0.5)
    raise GammaError(f"--device {text!r}: use one of {', '.join(d.name.removeprefix('Jetson ') for d in DEVICES.values())} or '<N>GB'")


@dataclass
class ModelSizes:
    """What the budget needs to know about a model, from a manifest or a preset config."""

    audio_params: float  # every graph of the audio chain
    enc_tokens: int  # positions an encoder attends over per window (1500)
    d_audio: int  # an encoder's hidden width
    n_encoders: int  # encoders run at once per window (the chain's graphs that read the mel)
    tokens_per_second: float  # LLM audio tokens per second of audio (25)
    n_layer: int
    n_kv_heads: int
    head_dim: int
    n_vocab: int
    gguf_bytes: dict[str, float]  # type -> file bytes, measured or scaled
    max_seconds: float | None = None  # audio past it is cut (manifest.audio.max_seconds), so needs no context


def sizes_from_bundle(bundle: str | Path) -> ModelSizes:
    """Sizes from the manifest's audio chain and the GGUF header; nothing is assumed about the model family."""
    bundle = Path(bundle)
    m = Manifest.read(bundle)
    audio_bytes = 0.0
    for name in m.audio.components:
        c = m.component(name)
        if c.precision != "fp32":
            raise BundleError(f"{bundle / 'manifest.json'}: components.{name}.precision is {c.precision}, expected fp32")
        audio_bytes += c.bytes + sum((bundle / e).stat().st_size for e in c.external_data if (bundle / e).is_file())
    enc_tokens, d_audio, n_encoders = encoder_shape(m, bundle)
    decoder = decoder_shape(m, bundle)
    audio = m.audio
    return ModelSizes(
        audio_params=audio_bytes / 4, enc_tokens=enc_tokens, d_audio=d_audio, n_encoders=n_encoders,
        tokens_per_second=audio.tokens_per_window / audio.window_seconds, max_seconds=audio.max_seconds, **decoder,
    )


def encoder_shape(m: Manifest, bundle: Path) -> tuple[int, int, int]:
    """(positions attended per window, hidden width, how many) of the chain's encoders: the graphs that read
    the mel. The positions are the exporter's ``encoder_tokens_per_window`` where it recorded them (an
    encoder that pools inside its graph puts out fewer tokens than it attends over), else the output's."""
    encoders = [s.component for s in m.audio.chain if "mel" in s.inputs.values()]
    if not encoders:
        raise BundleError(f"{bundle / 'manifest.json'}: field audio.chain has no graph that reads the mel")
    shapes = [m.component(name).outputs[0].shape for name in encoders]
    recorded = m.audio.recorded.get("encoder_tokens_per_window")
    tokens = int(recorded) if isinstance(recorded, int) else max(int(s[1]) for s in shapes)
    return tokens, max(int(s[-1]) for s in shapes), len(encoders)


def decoder_shape(m: Manifest, bundle: Path) -> dict:
    """Layers, KV heads, head width and vocabulary from the GGUF header under its own architecture
    (``general.architecture``, else the manifest's ``llm.arch``), and every GGUF type's size: measured where
    the bundle holds it, else scaled from one it holds by bits per weight."""
    from gamma_rt.runtime.gguf_check import check_gguf

    decoders = {c.precision.lower(): (name, c) for name, c in m.components.items() if c.kind == "gguf"}
    if not decoders:
        raise BundleError(f"{bundle / 'manifest.json'}: no GGUF decoder component; run `gamma-rt export gguf`")
    known_type, (_, c) = next(iter(decoders.items()))
    meta = check_gguf(bundle / c.file).metadata
    arch = meta.get("general.architecture", m.llm.arch)
    bits = GGUF_BITS.get(known_type)
    if bits is None:
        raise BundleError(f"{bundle / c.file}: GGUF type {known_type!r} not in the plan's table ({', '.join(GGUF_BITS)})")
    key = f"{arch}.block_count"
    if key not in meta:
        raise BundleError(f"{bundle / c.file}: GGUF field {key} missing (architecture {arch!r})")
    measured = {t: float(comp.bytes) for t, (_, comp) in decoders.items()}
    heads = int(meta[f"{arch}.attention.head_count"])
    return {
        "n_layer": int(meta[key]), "n_kv_heads": int(meta.get(f"{arch}.attention.head_count_kv", heads)),
        "head_dim": int(meta.get(f"{arch}.attention.key_length", m.llm.n_embd // heads)),
        "n_vocab": int(m.llm.n_vocab),
        "gguf_bytes": {t: measured.get(t, measured[known_type] * b / bits) for t, b in GGUF_BITS.items()},
    }


def sizes_from_preset(name: str, family: str = "gamma") -> ModelSizes:
    """Sizes of a family's preset (its ``plan_sizes``), for planning before anything is exported."""
    from gamma_rt.export.families.registry import family_named

    sizes = dict(family_named(family).plan_sizes(name))
    llm_params = sizes.pop("llm_params")
    return ModelSizes(**sizes, gguf_bytes={k: llm_params * b / 8 for k, b in GGUF_BITS.items()})


def context_tokens(sizes: ModelSizes, seconds: float) -> int:
    if sizes.max_seconds is not None:
        seconds = min(seconds, sizes.max_seconds)
    return math.ceil(seconds * sizes.tokens_per_second) + PROMPT_TOKENS + ANSWER_TOKENS


def kv_cache_bytes(sizes: ModelSizes, seconds: float) -> float:
    return 2 * sizes.n_layer * context_tokens(sizes, seconds) * sizes.n_kv_heads * sizes.head_dim * KV_BYTES


def audio_bytes(sizes: ModelSizes, precision: str) -> tuple[float, float]:
    """(weights, activations of one window) of the audio side at an engine precision.
    Heads are taken as d/64 and the FFN as 4d (Whisper's shapes) when only the manifest is known."""
    t, d, a = sizes.enc_tokens, sizes.d_audio, ACT_BYTES[precision]
    per_encoder = (d // 64) * t * t * a + 6 * t * d * a + t * 4 * d * a
    return sizes.audio_params * AUDIO_BYTES[precision], sizes.n_encoders * per_encoder


def budget(sizes: ModelSizes, audio_precision: str, gguf_type: str, seconds: float) -> dict[str, float]:
    weights, acts = audio_bytes(sizes, audio_precision)
    parts = {
        "audio_weights": weights, "audio_activations": acts, "decoder_weights": sizes.gguf_bytes[gguf_type],
        "kv_cache": kv_cache_bytes(sizes, seconds), "overhead": RUNTIME_OVERHEAD + sizes.n_vocab * N_UBATCH * 4,
    }
    parts["total"] = sum(parts.values())
    return parts


# best quality first; the first combination that fits is the recommendation
PREFERENCE = [("fp16", "f16"), ("fp16", "q8_0"), ("fp16", "q6_k"), ("fp16", "q5_k_m"), ("fp16", "q4_k_m"),
              ("int8", "q4_k_m"), ("int8", "q3_k_m"), ("int8", "q2_k")]


def plan(sizes: ModelSizes, device: Device, seconds: float) -> tuple[list[dict], dict | None]:
    rows = []
    for audio, gguf in PREFERENCE:
        parts = budget(sizes, audio, gguf, seconds)
        rows.append({"audio": audio, "decoder": gguf, **parts, "fits": parts["total"] <= device.budget})
    return rows, next((r for r in rows if r["fits"]), None)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="memory budget of a bundle on a device; which precisions fit",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", nargs="?", help="bundle folder (or use --preset before exporting)")
    p.add_argument("--preset", choices=["tiny", "small", "full"], help="plan from a preset's config instead of a bundle")
    p.add_argument("--family", default="gamma", help="whose preset --preset names (default gamma)")
    p.add_argument("--device", required=True, help='"Orin Nano 8GB", "Orin NX 16GB", "AGX Orin 64GB" or "<N>GB"')
    p.add_argument("--seconds", type=float, default=600, help="longest audio to answer about, s (default 600)")
    p.set_defaults(func=_cmd_plan)


def _cmd_plan(args) -> int:
    if bool(args.bundle) == bool(args.preset):
        raise GammaError("give a BUNDLE folder or --preset, not both or neither")
    sizes = sizes_from_bundle(args.bundle) if args.bundle else sizes_from_preset(args.preset, args.family)
    device = device_named(args.device)
    rows, best = plan(sizes, device, args.seconds)
    print(f"{device.name}: budget {device.budget / GB:.2f} GB ({device.memory_gb:g} GB less {device.reserved_gb:g} "
          f"reserved, {int(HEADROOM * 100)}% of it); audio {args.seconds:g} s = {context_tokens(sizes, args.seconds)} tokens of context")
    print(f"{'audio':6} {'decoder':8} {'audio w':>8} {'audio act':>9} {'decoder':>8} {'KV':>7} {'overhead':>8} {'total':>8}  fits")
    for r in rows:
        print(f"{r['audio']:6} {r['decoder']:8} " + " ".join(
            f"{r[k] / GB:{w}.2f}" for k, w in [("audio_weights", 8), ("audio_activations", 9), ("decoder_weights", 8),
                                             ("kv_cache", 7), ("overhead", 8), ("total", 8)]) + f"  {'yes' if r['fits'] else 'no'}")
    if best is None:
        print(f"nothing fits on {device.name}: the smallest combination needs {min(r['total'] for r in rows) / GB:.2f} GB; "
              "use a device with more memory, a smaller preset, or shorter audio (--seconds)")
        return 1
    print(f"recommended: audio engines {best['audio']}, decoder {best['decoder'].upper()} ({best['total'] / GB:.2f} GB)")
    return 0
