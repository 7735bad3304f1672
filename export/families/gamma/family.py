"""GaMMA, gamma-rt's own checkpoint format (the first family), and a plain Qwen3 folder as its decoder.

GaMMA's four audio graphs (two Whisper experts, fusion, projector) and its Qwen3 decoder under ``llm.*``
are described by config.py and checkpoint.py beside it; this module only declares them to the exporters.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..registry import register
from ..base import DecoderSpec, Family, GraphSpec, chain_step, spec
from ..folder import Weights, chat_template, decoder_shape, strip_prefixes, tokenizer_files

# The audio chain: both experts read the mel, fusion mixes them, the projector pools and projects.
GAMMA_CHAIN = [
    chain_step("temporal_encoder", {"mel": "mel"}, {"hidden": "temporal"}),
    chain_step("global_encoder", {"mel": "mel"}, {"hidden": "global"}),
    chain_step("fusion", {"temporal": "temporal", "global": "global"}, {"fused": "fused"}),
    chain_step("projector", {"fused": "fused"}, {"embeddings": "embeddings"}),
]
COMPONENTS = tuple(step["component"] for step in GAMMA_CHAIN)


def graph_io(cfg, name: str):
    """The fixed inputs and outputs of GaMMA component ``name`` for config ``cfg`` (a GammaConfig)."""
    frames, tokens = cfg.audio.window_frames, cfg.encoder_tokens_per_window
    d = cfg.temporal.d_model
    table = {
        "temporal_encoder": ([spec("mel", cfg.temporal.num_mel_bins, frames)], [spec("hidden", tokens, d)]),
        "global_encoder": ([spec("mel", cfg.global_.num_mel_bins, frames)], [spec("hidden", tokens, d)]),
        "fusion": ([spec("temporal", tokens, d), spec("global", tokens, d)], [spec("fused", tokens, d)]),
        "projector": ([spec("fused", tokens, d)], [spec("embeddings", cfg.tokens_per_window, cfg.llm.hidden_size)]),
    }
    return table[name]


def gamma_sections(cfg, family: str = "gamma") -> dict:
    """Manifest sections of a GaMMA config (also used around a plain Qwen3 decoder)."""
    audio = dataclasses.asdict(cfg.audio)
    audio.update(
        window_samples=cfg.audio.window_samples,
        window_frames=cfg.audio.window_frames,
        encoder_tokens_per_window=cfg.encoder_tokens_per_window,
        tokens_per_window=cfg.tokens_per_window,
        pool_stride=cfg.projector.pool_stride,
        max_seconds=None,
        token_count={"rule": "proportional"},
        chain=GAMMA_CHAIN,
    )
    llm = cfg.llm
    return {
        "audio": audio,
        "prompt": dataclasses.asdict(cfg.prompt),
        "llm": {"arch": "qwen3", "n_embd": llm.hidden_size, "n_vocab": llm.vocab_size, "n_layer": llm.num_hidden_layers},
        "source": {"preset": cfg.preset, "family": family},
    }


@register
class Gamma(Family):
    """gamma-rt's own format: config.json with ``"format": "gamma-rt/checkpoint"``."""

    name = "gamma"
    architectures = ("gamma-rt/checkpoint",)
    presets = ("tiny", "small", "full")
    init_options = ("whisper_init", "qwen3_init", "dtype")

    @classmethod
    def matches(cls, config: dict) -> bool:
        from .config import CONFIG_FORMAT

        return config.get("format") == CONFIG_FORMAT

    def __init__(self, folder: Path, config: dict):
        from .checkpoint import Checkpoint

        super().__init__(folder, config)
        self.checkpoint = Checkpoint(folder)
        self.cfg = self.checkpoint.config

    def check(self) -> None:
        self.checkpoint.verify()

    def graphs(self) -> list[GraphSpec]:
        cfg = self.cfg
        heads = {
            "temporal_encoder": cfg.temporal.encoder_attention_heads,
            "global_encoder": cfg.global_.encoder_attention_heads,
        }
        out = []
        for name in COMPONENTS:
            inputs, outputs = graph_io(cfg, name)
            out.append(GraphSpec(name, inputs, outputs, heads.get(name, cfg.fusion.n_heads), cfg.temporal.d_model,
                                 build=lambda name=name: self.module(name)))
        return out

    def module(self, name: str):
        """Component ``name`` in float32, returning a plain tensor (WhisperEncoder returns a ModelOutput)."""
        import torch

        return TensorOutput(self.checkpoint.component(name, dtype=torch.float32), name.endswith("_encoder"))

    def decoder(self, scratch: Path) -> DecoderSpec:
        tokenizer_files(self.folder)
        where = self.checkpoint._where
        tensors = {k[len("llm."):]: (where[k], k) for k in where if k.startswith("llm.")}
        if self.cfg.llm.tie_word_embeddings:
            tensors.pop("lm_head.weight", None)
        return DecoderSpec("qwen3", self.cfg.llm, tensors, self.folder,
                           chat_template(self.folder), f"gamma-{self.cfg.preset}-decoder")

    def manifest_sections(self) -> dict:
        return gamma_sections(self.cfg)

    def hash(self) -> str:
        return self.checkpoint.hash()

    @classmethod
    def init(cls, preset: str, out: Path, seed: int = 0, progress=None, whisper_init: Path | None = None,
             qwen3_init: Path | None = None, dtype: str | None = None) -> Path:
        """A random GaMMA checkpoint; the experts and the LLM may start from stock whisper / Qwen3 folders;
        ``dtype`` a torch dtype name (tiny: float32, else bfloat16)."""
        import torch

        from .checkpoint import qwen3_source, whisper_source, write_random_checkpoint
        from .config import GammaConfig
        from .tokenizer import write_tokenizer

        cfg = GammaConfig.preset_named(preset)
        sources = {}
        if whisper_init:
            for i, src in enumerate(whisper_source(whisper_init)):
                sources[f"whisper{i}"] = src
        if qwen3_init:
            sources["qwen3"] = qwen3_source(qwen3_init)
        write_random_checkpoint(cfg, out, seed=seed, dtype=getattr(torch, dtype) if dtype else None,
                                sources=sources, progress=progress)
        write_tokenizer(out, cfg, qwen3_folder=qwen3_init)
        return Path(out)

    @classmethod
    def plan_sizes(cls, preset: str) -> dict:
        """Parameter counts of a preset's config: two Whisper experts, the fusion blocks, the projector, Qwen3."""
        from .config import GammaConfig

        cfg = GammaConfig.preset_named(preset)
        d, llm = cfg.temporal.d_model, cfg.llm

        def expert(e):
            return e.num_mel_bins * 3 * e.d_model + e.d_model * 3 * e.d_model + e.max_source_positions * e.d_model + \
                e.encoder_layers * (4 * e.d_model**2 + 2 * e.d_model * e.encoder_ffn_dim)

        fusion = cfg.fusion.n_blocks * 2 * 4 * d * d + 2 * d * 2 + 2 * d * cfg.fusion.ffn_dim
        projector = d * cfg.projector.hidden_dim + cfg.projector.hidden_dim * llm.hidden_size
        layer = 2 * llm.hidden_size * llm.num_attention_heads * llm.head_dim + \
            2 * llm.hidden_size * llm.num_key_value_heads * llm.head_dim + 3 * llm.hidden_size * llm.intermediate_size
        return {
            "audio_params": expert(cfg.temporal) + expert(cfg.global_) + fusion + projector,
            "enc_tokens": cfg.encoder_tokens_per_window, "d_audio": d, "n_encoders": 2,
            "tokens_per_second": cfg.audio_tokens_per_second, "n_layer": llm.num_hidden_layers,
            "n_kv_heads": llm.num_key_value_heads, "head_dim": llm.head_dim, "n_vocab": llm.vocab_size,
            "llm_params": llm.num_hidden_layers * layer +
            llm.vocab_size * llm.hidden_size * (1 if llm.tie_word_embeddings else 2),
        }


@register
class Qwen3Decoder(Family):
    """A plain Qwen3 HF folder: the decoder of a GaMMA bundle (``export gguf`` only). GaMMA's audio tokens
    are added to its tokenizer when missing."""

    name = "qwen3"
    architectures = ("Qwen3ForCausalLM",)

    def __init__(self, folder: Path, config: dict):
        super().__init__(folder, config)
        self.shape = decoder_shape(config, str(self.folder / "config.json"), "qwen3")
        self.weights = Weights(self.folder)

    def _gamma_config(self):
        from .config import GammaConfig

        return dataclasses.replace(GammaConfig(), llm=self.shape, preset="qwen3-hf")

    def decoder(self, scratch: Path) -> DecoderSpec:
        from .tokenizer import write_tokenizer

        tokenizer_folder = scratch / "tokenizer"
        write_tokenizer(tokenizer_folder, self._gamma_config(), qwen3_folder=self.folder)
        names = strip_prefixes(self.weights.where, {"model.": "model.", "lm_head.": "lm_head."})
        if self.shape.tie_word_embeddings:
            names.pop("lm_head.weight", None)
        tensors = {ours: (self.weights.where[key], key) for ours, key in names.items()}
        template = chat_template(self.folder) or chat_template(tokenizer_folder)
        return DecoderSpec("qwen3", self.shape, tensors, tokenizer_folder, template, "qwen3-hf-decoder")

    def manifest_sections(self) -> dict:
        return gamma_sections(self._gamma_config())

    def hash(self) -> str:
        return self.weights.hash()


class TensorOutput:
    """``inner`` returning a plain tensor (WhisperEncoder returns a ModelOutput, which does not trace); the
    module class is built on first use, so torch is imported by the exporters only."""

    def __new__(cls, inner, encoder: bool):
        import torch

        class GraphModule(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.inner = inner

            def forward(self, *xs):
                y = self.inner(*xs)
                return y.last_hidden_state if encoder else y

        return GraphModule()
