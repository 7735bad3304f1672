"""Typed configuration of a GaMMA checkpoint, read from and written to ``config.json``.

The config travels with the weights: ``gamma-rt init`` writes it, every loader rebuilds the model from it.
Presets are named constructors: ``GammaConfig.tiny()``, ``.small()``, ``.full()``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from gamma_rt.decoder_shape import DecoderShape
from gamma_rt.errors import CheckpointError

CONFIG_NAME = "config.json"
CONFIG_FORMAT = "gamma-rt/checkpoint"
CONFIG_VERSION = 1


@dataclass
class AudioConfig:
    """Whisper large-v3 front end: 16 kHz mono, 128-bin log-mel, 30 s windows of 3000 frames."""

    sample_rate: int = 16000
    n_fft: int = 400
    hop_length: int = 160
    n_mels: int = 128
    window_seconds: int = 30

    @property
    def window_samples(self) -> int:
        return self.sample_rate * self.window_seconds

    @property
    def window_frames(self) -> int:
        return self.window_samples // self.hop_length


@dataclass
class ExpertConfig:
    """One Whisper-style audio expert; field names follow transformers' WhisperConfig."""

    d_model: int = 1280
    encoder_layers: int = 32
    encoder_attention_heads: int = 20
    encoder_ffn_dim: int = 5120
    num_mel_bins: int = 128
    max_source_positions: int = 1500

    def to_whisper_config(self):
        from transformers import WhisperConfig

        return WhisperConfig(
            d_model=self.d_model,
            encoder_layers=self.encoder_layers,
            encoder_attention_heads=self.encoder_attention_heads,
            encoder_ffn_dim=self.encoder_ffn_dim,
            decoder_layers=1,
            decoder_attention_heads=self.encoder_attention_heads,
            decoder_ffn_dim=self.encoder_ffn_dim,
            num_mel_bins=self.num_mel_bins,
            max_source_positions=self.max_source_positions,
            activation_function="gelu",
            dropout=0.0,
            attention_dropout=0.0,
            activation_dropout=0.0,
        )


@dataclass
class FusionConfig:
    """Dual-encoder fusion: injector/extractor cross-attention blocks, then a token-level router and an FFN."""

    n_blocks: int = 1
    n_heads: int = 20
    ffn_dim: int = 5120
    # ViT-Adapter style: the injector's output is scaled by a learnable gate that starts at this value.
    injector_gate_init: float = 0.0
    layer_norm_eps: float = 1e-5


@dataclass
class ProjectorConfig:
    """Average pooling over time, then a 2-layer GELU MLP to the LLM width."""

    pool_stride: int = 2
    hidden_dim: int = 4096


@dataclass
class PromptConfig:
    """How audio enters the chat prompt. ``{audio}`` expands to start + N placeholders + end."""

    audio_start: str = "<|audio_start|>"
    audio_token: str = "<|audio_pad|>"
    audio_end: str = "<|audio_end|>"
    # Text put between windows, formatted with the window's start time; empty to disable.
    time_marker: str = ""
    user_template: str = "<|im_start|>user\n{audio}\n{question}<|im_end|>\n<|im_start|>assistant\n"
    system: str = ""
    stop: list[str] = field(default_factory=lambda: ["<|im_end|>", "<|endoftext|>"])


@dataclass
class GammaConfig:
    """The whole model: two experts, fusion, projector, LLM, front end and prompt format."""

    family: str = "gamma"
    audio: AudioConfig = field(default_factory=AudioConfig)
    temporal: ExpertConfig = field(default_factory=ExpertConfig)
    global_: ExpertConfig = field(default_factory=ExpertConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)
    llm: DecoderShape = field(default_factory=DecoderShape.qwen3_8b)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    preset: str = "full"

    # --- derived sizes -------------------------------------------------------------------------

    @property
    def encoder_tokens_per_window(self) -> int:
        """Expert output frames per 30 s window (Whisper: 1500)."""
        return self.audio.window_frames // 2

    @property
    def tokens_per_window(self) -> int:
        """LLM audio tokens per full 30 s window after pooling (750)."""
        return self.encoder_tokens_per_window // self.projector.pool_stride

    @property
    def audio_tokens_per_second(self) -> float:
        return self.tokens_per_window / self.audio.window_seconds

    # --- presets -------------------------------------------------------------------------------

    @classmethod
    def full(cls) -> "GammaConfig":
        """The GaMMA shape: two Whisper-large-v3 encoders and a Qwen3-8B decoder."""
        return cls(preset="full")

    @classmethod
    def small(cls) -> "GammaConfig":
        """Whisper-base-sized experts (d 512, 6 layers) and a Qwen3-0.6B-sized LLM, for CPU benchmarks."""
        expert = ExpertConfig(d_model=512, encoder_layers=6, encoder_attention_heads=8, encoder_ffn_dim=2048)
        return cls(
            preset="small",
            temporal=expert,
            global_=dataclasses.replace(expert),
            fusion=FusionConfig(n_blocks=1, n_heads=8, ffn_dim=2048),
            projector=ProjectorConfig(hidden_dim=1024),
            llm=DecoderShape.qwen3_0_6b(),
        )

    @classmethod
    def tiny(cls) -> "GammaConfig":
        """A few-MB model for tests. The vocab fits the built-in tiny tokenizer."""
        expert = ExpertConfig(d_model=64, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=128)
        return cls(
            preset="tiny",
            temporal=expert,
            global_=dataclasses.replace(expert),
            # A non-zero gate so that tests exercise the injector path.
            fusion=FusionConfig(n_blocks=1, n_heads=4, ffn_dim=128, injector_gate_init=0.5),
            projector=ProjectorConfig(hidden_dim=64),
            llm=DecoderShape.tiny(),
        )

    @classmethod
    def preset_named(cls, name: str) -> "GammaConfig":
        presets = {"tiny": cls.tiny, "small": cls.small, "full": cls.full}
        if name not in presets:
            raise CheckpointError(f"unknown preset {name!r}; choose one of {', '.join(presets)}")
        return presets[name]()

    # --- config.json ---------------------------------------------------------------------------

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["global"] = d.pop("global_")
        return {"format": CONFIG_FORMAT, "format_version": CONFIG_VERSION, **d}

    @classmethod
    def from_dict(cls, d: dict, source: str = "config") -> "GammaConfig":
        d = dict(d)
        fmt, version = d.pop("format", None), d.pop("format_version", None)
        if fmt != CONFIG_FORMAT:
            raise CheckpointError(f"{source}: field 'format' is {fmt!r}, expected {CONFIG_FORMAT!r}")
        if not isinstance(version, int) or version > CONFIG_VERSION:
            raise CheckpointError(
                f"{source}: field 'format_version' is {version!r}; this gamma-rt reads up to {CONFIG_VERSION}"
            )
        if "global" in d:
            d["global_"] = d.pop("global")
        parts = {
            "audio": AudioConfig,
            "temporal": ExpertConfig,
            "global_": ExpertConfig,
            "fusion": FusionConfig,
            "projector": ProjectorConfig,
            "llm": DecoderShape,
            "prompt": PromptConfig,
        }
        kwargs = {}
        for name, value in d.items():
            if name in parts:
                kwargs[name] = _build(parts[name], value, f"{source}: {name}")
            elif name in ("family", "preset"):
                kwargs[name] = value
            else:
                raise CheckpointError(f"{source}: unknown field {name!r}")
        return cls(**kwargs)

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / CONFIG_NAME
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, folder: str | Path) -> "GammaConfig":
        path = Path(folder) / CONFIG_NAME
        if not path.is_file():
            raise CheckpointError(f"{path}: no config.json; is this a gamma-rt checkpoint folder?")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{path}: not valid JSON ({e})") from None
        return cls.from_dict(data, source=str(path))


def _build(klass, value, where: str):
    if not isinstance(value, dict):
        raise CheckpointError(f"{where}: expected an object, got {type(value).__name__}")
    names = {f.name for f in dataclasses.fields(klass)}
    unknown = set(value) - names
    if unknown:
        raise CheckpointError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    return klass(**value)
