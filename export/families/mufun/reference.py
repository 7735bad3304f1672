"""The oracle: MuFun's forward pass in PyTorch, from transformers' WhisperEncoder and Qwen3ForCausalLM under
MuFun's module names, following its code step by step (the file of github laitselec/MuFun each step comes
from is named beside it; NOTES.md has the lines).

    chunks(samples)         16 kHz mono -> 30 s chunks, a later chunk of 0.5 s or less dropped
    MuFunReference.features a chunk -> its padded (1, 128, 3000) Whisper mel (WhisperFeatureExtractor)
    MuFunReference.encode   mels (n, 128, 3000) -> embeddings (n, 300, n_embd) float32
    MuFunReference.answer   greedy answer ids to one question about one song

Float32 throughout; torch and transformers are imported here only (the runtime never imports this).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from .family import CHUNK_SECONDS, DROP_SECONDS, FEATURE_LAYERS, POOL_STRIDE, SAMPLE_RATE
from .prompt import AUDIO, SYSTEM

IMAGE_TOKEN_INDEX = -200  # tinyllava/utils/constants.py


def chunks(samples: np.ndarray) -> list[np.ndarray]:
    """image_preprocess.load_audio_single: the whole audio if it fits one chunk, else 30 s chunks keeping
    those of more than 0.5 s (so the first chunk is always kept)."""
    clip, drop = CHUNK_SECONDS * SAMPLE_RATE, int(SAMPLE_RATE * DROP_SECONDS)
    if len(samples) <= clip:
        return [samples]
    return [samples[i:i + clip] for i in range(0, len(samples), clip) if len(samples[i:i + clip]) > drop]


def mufun_prompt(question: str) -> str:
    """Qwen2InstructTemplate's prompt for one question with the answer left open (template/base.py, RL mode:
    the empty answer's ``<|im_end|>`` cut off), the question carrying ``<audio>\\n`` first."""
    return SYSTEM + " " + "USER: " + AUDIO + "\n" + question + " " + "ASSISTANT: "


class MuFunReference(nn.Module):
    """TinyLlavaForConditionalGeneration's inference path, from a MuFun folder."""

    def __init__(self, folder: str | Path):
        super().__init__()
        from safetensors.torch import load_file
        from transformers import Qwen2Tokenizer, Qwen3Config, Qwen3ForCausalLM, WhisperConfig, WhisperFeatureExtractor
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        from . import MuFun
        from ..folder import read_json
        from .graphs import Connector

        self.folder = Path(folder)
        family = MuFun(self.folder, read_json(self.folder / "config.json"))
        config = family.config
        vision = WhisperConfig(**{k: v for k, v in config["vision_config"].items() if k != "model_type"})
        text = Qwen3Config(**{k: v for k, v in config["text_config"].items() if k != "model_type"})
        vision._attn_implementation = text._attn_implementation = "eager"
        self.encoder = WhisperEncoder(vision)
        self.connector = Connector(family.feature_width, family.hx, text.hidden_size)
        self.llm = Qwen3ForCausalLM(text)
        self.avg_pooler = nn.AvgPool1d(POOL_STRIDE, stride=POOL_STRIDE)
        self.max_length = config.get("tokenizer_model_max_length")
        state = {}
        for f in family.weights.files:
            state.update(load_file(f))
        parts = {"vision_tower._vision_tower.": self.encoder, "connector._connector.": self.connector,
                 "language_model.": self.llm}
        for prefix, module in parts.items():
            module.load_state_dict({k[len(prefix):]: v.float() for k, v in state.items() if k.startswith(prefix)},
                                   strict=True)
        self.eval().float()
        # whisper.py's processor is openai/whisper-large-v3's: 128 bins, 30 s, hop 160 (family.WHISPER_FRONT_END)
        self.feature_extractor = WhisperFeatureExtractor(feature_size=vision.num_mel_bins)
        # llm/qwen3.py: AutoTokenizer(use_fast=False) on Qwen3's files, which name Qwen2Tokenizer (named here
        # directly: AutoTokenizer would read config.json's auto_map and ask to run the folder's code)
        self.tokenizer = Qwen2Tokenizer.from_pretrained(self.folder)
        self.stop_ids = [self.tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", self.tokenizer.eos_token)]

    def features(self, chunk: np.ndarray) -> torch.Tensor:
        """ImagePreprocess (image_aspect_ratio 'audio'): the padded mel, (1, n_mels, 3000) float32."""
        return self.feature_extractor(chunk, sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features

    @torch.no_grad()
    def tower(self, mel: torch.Tensor) -> torch.Tensor:
        """WpmAudioTower.forward: hidden states 0/7/15/32 concatenated, then AvgPool1d(5, 5) over time."""
        states = self.encoder(mel, output_hidden_states=True).hidden_states
        hidden = torch.cat([states[i] for i in FEATURE_LAYERS], dim=-1)
        return self.avg_pooler(hidden.permute(0, 2, 1)).permute(0, 2, 1)

    @torch.no_grad()
    def encode(self, mels: torch.Tensor) -> torch.Tensor:
        """encode_images for a batch of 3000-frame mels: the connector over the tower's output."""
        return self.connector(self.tower(mels))

    def input_ids(self, prompt: str) -> list[int]:
        """Template.tokenizer_image_token: each piece between ``<audio>`` tokenized alone, -200 between them."""
        pieces = [self.tokenizer(piece).input_ids for piece in prompt.split(AUDIO)]
        ids = list(pieces[0])
        for piece in pieces[1:]:
            ids += [IMAGE_TOKEN_INDEX, *piece]
        return ids

    @torch.no_grad()
    def inputs_embeds(self, prompt: str, samples: np.ndarray) -> torch.Tensor:
        """prepare_inputs_labels_for_multimodal for one song: the text embeddings with every chunk's 300
        embeddings in place of -200, cut to tokenizer_model_max_length. (1, n, n_embd)."""
        ids = self.input_ids(prompt)
        mels = torch.cat([self.features(c) for c in chunks(samples)])
        audio = self.encode(mels).reshape(-1, self.llm.config.hidden_size)
        at = ids.index(IMAGE_TOKEN_INDEX)
        embed = self.llm.get_input_embeddings()
        text = embed(torch.tensor([i for i in ids if i != IMAGE_TOKEN_INDEX]))
        out = torch.cat([text[:at], audio, text[at:]])
        if self.max_length is not None:
            out = out[:self.max_length]
        return out[None]

    @torch.no_grad()
    def answer(self, samples: np.ndarray, question: str, max_new_tokens: int) -> list[int]:
        """Greedy answer ids (the stop token and what follows dropped), from 16 kHz mono ``samples``."""
        embeds = self.inputs_embeds(mufun_prompt(question), samples)
        out = self.llm.generate(inputs_embeds=embeds, attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long),
                                max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=self.stop_ids,
                                pad_token_id=self.stop_ids[-1])
        ids = out[0].tolist()
        return ids[:next((i for i, t in enumerate(ids) if t in self.stop_ids), len(ids))]
