"""The PyTorch reference pipeline: how a GaMMA checkpoint runs without gamma-rt's compiled parts.

transformers' WhisperFeatureExtractor for the log-mel, ``GammaModel.encode_window`` (eager PyTorch) for the
audio side, the checkpoint's own HF tokenizer for the prompt, and transformers ``generate`` (greedy) on
``inputs_embeds``. It is the oracle the runtime is checked against (tests/test_pipeline.py) and the
baseline bench/ measures.

It shares no code with runtime/'s pipeline on purpose: windowing and prompt building are written again
here, from the same config fields, so a mistake in either shows up as a difference.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .checkpoint import Checkpoint


@dataclass
class ReferenceAnswer:
    text: str
    tokens: list[int]
    timings_ms: dict = field(default_factory=dict)


class ReferencePipeline:
    """``ReferencePipeline(checkpoint_folder).ask(audio, question)``; ``audio`` is a file path or
    (samples,) float32 mono at the checkpoint's sample rate."""

    def __init__(self, checkpoint: str | Path, dtype: torch.dtype = torch.float32, device: str = "cpu"):
        from transformers import AutoTokenizer, WhisperFeatureExtractor

        ckpt = Checkpoint(checkpoint)
        self.config = cfg = ckpt.config
        self.dtype, self.device = dtype, device
        self.model = ckpt.model(dtype).to(device)
        self.tokenizer = AutoTokenizer.from_pretrained(str(checkpoint))
        self.features = WhisperFeatureExtractor(
            feature_size=cfg.audio.n_mels, sampling_rate=cfg.audio.sample_rate, hop_length=cfg.audio.hop_length,
            chunk_length=cfg.audio.window_seconds, n_fft=cfg.audio.n_fft,
        )
        p = cfg.prompt
        self.end_ids = [self.tokenizer.convert_tokens_to_ids(s) for s in p.stop]

    # --- audio side -------------------------------------------------------------------------------

    def load(self, audio) -> np.ndarray:
        if isinstance(audio, np.ndarray):
            return audio.astype(np.float32)
        from gamma_rt.runtime.audio import load_audio  # decoding only; the model side is all PyTorch

        return load_audio(audio, self.config.audio.sample_rate)

    @torch.no_grad()
    def embed(self, samples: np.ndarray) -> list[np.ndarray]:
        """Per 30 s window, the LLM embeddings (n_valid_tokens, n_embd) float32; padding tokens dropped."""
        a = self.config.audio
        size = a.window_samples
        out = []
        for start in range(0, len(samples), size):
            chunk = samples[start:start + size]
            mel = self.features(chunk, sampling_rate=a.sample_rate, return_tensors="pt", padding="max_length",
                                max_length=size).input_features
            embd = self.model.encode_window(mel.to(self.device, self.dtype))[0]
            n_valid = max(1, min(self.config.tokens_per_window,
                                 math.ceil(len(chunk) * self.config.tokens_per_window / size)))
            out.append(embd[:n_valid].float().cpu().numpy())
        return out

    # --- prompt -----------------------------------------------------------------------------------

    def _ids(self, text: str) -> torch.Tensor:
        return torch.tensor(self.tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)

    def inputs_embeds(self, windows: list[np.ndarray], question: str) -> torch.Tensor:
        """(1, n, n_embd): system + user header + audio_start, windows (time markers between), audio_end,
        the question and the assistant header, as the checkpoint's config.prompt describes."""
        p = self.config.prompt
        before, after = p.user_template.split("{audio}")
        system = f"<|im_start|>system\n{p.system}<|im_end|>\n" if p.system else ""
        embed_tokens = self.model.llm.get_input_embeddings()
        parts = [embed_tokens(self._ids(system + before + p.audio_start).to(self.device))]
        for i, w in enumerate(windows):
            if i and p.time_marker:
                start_s = float(i * self.config.audio.window_seconds)
                minutes, seconds = divmod(int(round(start_s)), 60)
                marker = p.time_marker.format(start_s=start_s, start=f"{minutes}:{seconds:02d}", index=i)
                parts.append(embed_tokens(self._ids(marker).to(self.device)))
            parts.append(torch.from_numpy(w).to(self.device, self.dtype))
        parts.append(embed_tokens(self._ids(p.audio_end + after.replace("{question}", question)).to(self.device)))
        return torch.cat(parts)[None]

    # --- answer -----------------------------------------------------------------------------------

    @torch.no_grad()
    def generate(self, embeds: torch.Tensor, max_tokens: int) -> list[int]:
        """Greedy token ids after ``embeds`` (end-of-turn token not included)."""
        out = self.model.llm.generate(
            inputs_embeds=embeds, attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long, device=self.device),
            max_new_tokens=max_tokens, do_sample=False, eos_token_id=self.end_ids, pad_token_id=self.end_ids[0],
        )[0].tolist()
        return out[:next((i for i, t in enumerate(out) if t in self.end_ids), len(out))]

    def ask(self, audio, question: str, max_tokens: int = 256) -> ReferenceAnswer:
        timings = {}
        t = time.perf_counter()
        samples = self.load(audio)
        windows = self.embed(samples)
        timings["audio_side"] = (time.perf_counter() - t) * 1e3
        t = time.perf_counter()
        tokens = self.generate(self.inputs_embeds(windows, question), max_tokens)
        timings["generate"] = (time.perf_counter() - t) * 1e3
        return ReferenceAnswer(self.tokenizer.decode(tokens, skip_special_tokens=True), tokens, timings)
