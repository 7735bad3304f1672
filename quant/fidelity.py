"""How close each decoder GGUF of a bundle stays to the F32 one, on a fixed prompt set with audio embeddings.

For every prompt (chat header, audio embeddings, question) the F32 decoder's greedy answer is taken as the
path; every variant is then teacher-forced along that same path, and at each position its next-token
distribution is compared with F32's:

- top-1 agreement: the share of positions where the variant's argmax is F32's argmax;
- KL(F32 || variant) of the softmax distributions, in nats, averaged over positions.

All variants run with an F32 KV cache and no flash attention, so the figures measure the weights alone.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gamma_rt.errors import BundleError
from gamma_rt.manifest import Manifest

QUESTIONS = (
    "What genre is this song?",
    "Describe the tempo and the rhythm.",
    "Which instruments can you hear?",
    "What is the mood of this music?",
)
AUDIO_TOKENS = 24  # audio embeddings per prompt: a second of audio at 25 tokens/s
ANSWER_TOKENS = 16  # positions compared per prompt after the prompt's own last position


@dataclass
class Fidelity:
    variant: str  # component name
    gguf_type: str
    file_mib: float
    top1_agreement: float
    mean_kl: float
    max_kl: float
    positions: int


def audio_embeddings(n_embd: int, seed: int, scale: float) -> np.ndarray:
    """(AUDIO_TOKENS, n_embd) float32, Gaussian at the RMS of the model's token embeddings."""
    return (np.random.default_rng(seed).standard_normal((AUDIO_TOKENS, n_embd)) * scale).astype(np.float32)


def embedding_rms(gguf_file: Path) -> float:
    """RMS of an F32 GGUF's token embedding table: the scale audio embeddings should share with text."""
    from gamma_rt.runtime.gguf_check import check_gguf

    check_gguf(gguf_file)
    import gguf

    for t in gguf.GGUFReader(gguf_file).tensors:
        if t.name == "token_embd.weight":
            return float(np.sqrt(np.mean(np.square(np.asarray(t.data, dtype=np.float64)))))
    raise BundleError(f"{gguf_file}: no token_embd.weight tensor")


def _distributions(session, prompt, audio: np.ndarray, path: list[int] | None) -> tuple[np.ndarray, list[int]]:
    """Log-softmax rows (ANSWER_TOKENS + 1, n_vocab) along ``path`` (or along the greedy path, returned)."""
    pre, post = prompt
    session.clear()
    session.eval_tokens(pre)
    session.eval_embeddings(audio)
    session.eval_tokens(post)
    rows, chosen = [], []
    for step in range(ANSWER_TOKENS + 1):
        logits = session.logits().astype(np.float64)
        rows.append(logits - np.logaddexp.reduce(logits))
        if step == ANSWER_TOKENS:
            break
        token = int(np.argmax(logits)) if path is None else path[step]
        chosen.append(token)
        session.eval_tokens([token])
    return np.array(rows), chosen


def measure(bundle: str | Path, n_threads: int | None = None) -> list[Fidelity]:
    """Fidelity of every GGUF decoder component of ``bundle`` against its F32 ``decoder``."""
    from gamma_rt.runtime.decoder import DecoderSession

    bundle = Path(bundle)
    manifest = Manifest.load(bundle)
    variants = {name: c for name, c in manifest.components.items() if c.kind == "gguf"}
    reference = next((n for n, c in variants.items() if c.precision == "f32"), None)
    if reference is None:
        raise BundleError(f"{bundle / 'manifest.json'}: no f32 decoder to compare against ('gamma-rt export gguf --type f32')")
    ref_file = bundle / variants[reference].file
    scale = embedding_rms(ref_file)
    p = manifest.prompt

    def open_session(file: Path):
        return DecoderSession(file, n_ctx=256, n_threads=n_threads, n_seq_max=1, kv_type="f32")

    with open_session(ref_file) as s:
        prompts = [
            (s.tokenize(f"<|im_start|>user\n{p['audio_start']}"),
             s.tokenize(f"{p['audio_end']}\n{q}<|im_end|>\n<|im_start|>assistant\n"))
            for q in QUESTIONS
        ]
        audios = [audio_embeddings(s.n_embd, seed, scale) for seed in range(len(QUESTIONS))]
        ref = [_distributions(s, prompt, audio, None) for prompt, audio in zip(prompts, audios)]

    results = []
    for name, c in sorted(variants.items(), key=lambda kv: -kv[1].bytes):
        with open_session(bundle / c.file) as s:
            kls, agree = [], []
            for (ref_rows, path), prompt, audio in zip(ref, prompts, audios):
                rows, _ = _distributions(s, prompt, audio, path)
                kls.extend(np.sum(np.exp(ref_rows) * (ref_rows - rows), axis=1))
                agree.extend(np.argmax(ref_rows, axis=1) == np.argmax(rows, axis=1))
        results.append(Fidelity(name, c.precision, c.bytes / 2**20, float(np.mean(agree)),
                                float(np.mean(kls)), float(np.max(kls)), len(kls)))
    return results


def table(results: list[Fidelity]) -> str:
    """A markdown table, one row per variant."""
    lines = ["| variant | type | size (MiB) | top-1 agreement | mean KL (nats) | max KL |", "|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r.variant} | {r.gguf_type} | {r.file_mib:.2f} | {r.top1_agreement:.3f} | "
                     f"{r.mean_kl:.2e} | {r.max_kl:.2e} |")
    return "\n".join(lines)


def write_json(results: list[Fidelity], bundle: Path, out_dir: Path, n_threads: int | None) -> Path:
    """bench/results/gguf_fidelity-<preset>.json with the inputs, the machine and the figures."""
    import dataclasses

    from gamma_rt.machine import describe

    manifest = Manifest.read(bundle)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"gguf_fidelity-{manifest.source.get('preset', 'unknown')}.json"
    record = {
        "benchmark": "gguf_fidelity",
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "inputs": {"bundle_source": manifest.source, "questions": list(QUESTIONS), "audio_tokens": AUDIO_TOKENS,
                   "answer_tokens": ANSWER_TOKENS, "reference": "f32, greedy path, teacher-forced variants"},
        "machine": describe(n_threads or 0),
        "results": [dataclasses.asdict(r) for r in results],
    }
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path
