"""The PyTorch way for a checkpoint folder that transformers itself runs (Music Flamingo, Audio Flamingo 3).

The model class is the one config.json's ``architectures`` names (``MusicFlamingoForConditionalGeneration``,
``AudioFlamingo3ForConditionalGeneration``), loaded by transformers in float32 eval mode with its processor,
so nothing of gamma-rt's stands between the folder and the figures:

- audio side: ``get_audio_features`` on the bench's window (encoder, pooling, RoTE where the model has it,
  projector), timed as one stage: transformers runs them as one call;
- decoder: greedy ``generate(inputs_embeds=...)`` from the same embeddings the llama.cpp side gets;
- reference pipeline: the processor (front end, chat template) and ``generate`` on each end-to-end file,
  read with the runtime's own reader at 16 kHz mono.

Runs in bench/baselines.py's child process (it needs torch).
"""

from __future__ import annotations

import inspect
import json
import time
from pathlib import Path

import numpy as np

from .timing import measure, reference_row, summarize


def model_class(folder: str | Path):
    """The transformers class config.json's ``architectures`` names, if transformers has it and it takes audio
    (``get_audio_features``); None for a folder transformers does not run (a GaMMA checkpoint)."""
    config = Path(folder) / "config.json"
    if not config.is_file():
        return None
    import transformers

    for name in json.loads(config.read_text()).get("architectures") or []:
        cls = getattr(transformers, name, None)
        if cls is not None and hasattr(cls, "get_audio_features"):
            return cls
    return None


def load(folder: str | Path, threads: int):
    """(model, processor) in float32 eval mode on ``threads`` CPU threads."""
    import torch
    from transformers import AutoProcessor

    torch.set_num_threads(threads)
    model = model_class(folder).from_pretrained(folder, dtype=torch.float32).eval()
    return model, AutoProcessor.from_pretrained(folder)


def time_audio_side(model, mel: np.ndarray, repeat: int, warmup: int) -> dict:
    """``get_audio_features`` on one full window's (1, n_mels, frames) mel: {"get_audio_features": Stats}."""
    import torch

    features = torch.from_numpy(np.ascontiguousarray(mel, dtype=np.float32))
    mask = torch.ones(features.shape[0], features.shape[-1], dtype=torch.long)
    kwargs = {}
    if "input_ids" in inspect.signature(model.get_audio_features).parameters:  # RoTE: timestamps from placeholders
        _, post = model.model.audio_tower._get_feat_extract_output_lengths(mask.sum(-1))
        kwargs["input_ids"] = torch.full((1, int(post.sum())), model.config.audio_token_id, dtype=torch.long)

    def call():
        with torch.inference_mode():
            return model.get_audio_features(features, mask, **kwargs).pooler_output

    return {"get_audio_features": measure(call, repeat, warmup)}


def time_generate(model, embeddings: np.ndarray, n_decode: int, repeat: int, warmup: int) -> dict:
    """Greedy ``generate`` from (n, n_embd) embeddings, as bench/decoder_side.py's transformers_generate:
    ``prefill_ms`` a 1-token generate, ``decode_ms_per_token`` (t(n_decode + 1) - t(1)) / n_decode."""
    import torch

    embeds = torch.from_numpy(embeddings)[None]
    pad = model.generation_config.pad_token_id or model.generation_config.eos_token_id or 0
    pad = pad[0] if isinstance(pad, list) else pad

    def generate(n: int):
        with torch.inference_mode():
            return model.generate(inputs_embeds=embeds, attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long),
                                  max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=pad)

    prefill = measure(lambda: generate(1), repeat, warmup)
    long = measure(lambda: generate(n_decode + 1), repeat, warmup=0)
    per_token = [max(0.0, (t - p) / n_decode) for t, p in zip(long.samples, prefill.samples)]
    return {"prefill_ms": prefill, "decode_ms_per_token": summarize(per_token)}


def time_reference(model, processor, request: dict, question: str) -> dict:
    """The processor and ``generate`` on each end-to-end file, per length (whole file first: no streaming, so
    no time to first token after the audio is reported)."""
    from gamma_rt.runtime.audio import load_audio

    files = {float(k): v for k, v in request["audio_files"].items()}
    if not files:
        return {"absent": "no end-to-end audio files (end_to_end was skipped)"}
    rate = processor.feature_extractor.sampling_rate
    messages = [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": question}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def ask(path: str) -> dict:
        import torch

        t0 = time.perf_counter()
        inputs = processor(text=text, audio=load_audio(path, rate), return_tensors="pt")
        t1 = time.perf_counter()
        with torch.inference_mode():
            model.generate(**inputs, max_new_tokens=request["n_decode"], do_sample=False)
        t2 = time.perf_counter()
        return {"total_ms": (t2 - t0) * 1e3, "processor": (t1 - t0) * 1e3, "generate": (t2 - t1) * 1e3}

    for _ in range(request["warmup"]):
        ask(files[min(files)])
    rows = {}
    for seconds, path in sorted(files.items()):
        runs = [ask(path) for _ in range(request["repeat"])]
        rows[f"{seconds:g}s"] = reference_row(seconds, runs, ("processor", "generate"))
    return rows
