"""What every model family declares: the audio graphs, the decoder for GGUF, and the manifest sections.

A family is opened on a checkpoint folder (``Family(folder, config)``); the exporters only ask it questions:

- ``graphs()``: the audio-side ONNX components, each with its graph I/O and a builder of the torch module;
- ``decoder()``: the GGUF architecture, hyperparameters, where each LLM tensor is and the tokenizer;
- ``manifest_sections()``: the bundle manifest's ``audio``, ``prompt``, ``llm`` and ``source`` sections;
- ``hash()``: the source id that lets ``export onnx`` and ``export gguf`` share one bundle.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from gamma_rt.decoder_shape import DecoderShape
from gamma_rt.errors import CheckpointError
from gamma_rt.manifest import TensorSpec

BATCH = "batch"


def spec(name: str, *dims, dtype: str = "float32") -> TensorSpec:
    """A graph input/output with a free batch axis first."""
    return TensorSpec(name, [BATCH, *dims], dtype)


@dataclass
class GraphSpec:
    """One audio-side ONNX component: manifest key (without precision), graph I/O, and how to build it."""

    name: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    n_heads: int  # for the attention fusion
    d_model: int
    build: Callable[[], "object"]  # -> torch.nn.Module in float32; forward(*inputs) -> the output tensor
    # Node-name prefixes (torch module scopes, e.g. "/rote/") kept in float32 in fp16 graphs.
    fp32_scopes: tuple[str, ...] = ()


@dataclass
class DecoderSpec:
    """The decoder as the GGUF writer needs it."""

    arch: str  # gguf-py architecture name: "qwen2" | "qwen3" | "llama"
    shape: DecoderShape
    tensors: dict[str, tuple[Path, str]]  # HF Qwen key ("model.layers.0...") -> (safetensors file, stored key)
    tokenizer_folder: Path
    chat_template: str | None
    name: str  # general.name
    extra: dict = field(default_factory=dict)
    # (HF key, float32 weight) -> the weight to write: a LoRA adapter merged in (export/families/openmu)
    merge: Callable | None = None


@dataclass
class AdapterSpec:
    """A LoRA adapter kept apart from its base, as the GGUF adapter writer needs it.

    ``targets``: the base's HF weight keys it changes; ``matrices(key)`` -> (A (r, in), B (out, r)) float32;
    ``alpha``: what llama.cpp's ``adapter.lora.alpha`` must hold so that it scales B @ A by the adapter's
    own scale (alpha / r, or alpha / sqrt(r) for rsLoRA)."""

    arch: str
    shape: DecoderShape
    targets: list[str]
    matrices: Callable[[str], tuple]
    rank: int
    alpha: float
    name: str
    base_id: str  # sha256 of the base's weights: the manifest refuses the adapter on any other decoder


def chain_step(component: str, inputs: dict[str, str], outputs: dict[str, str]) -> dict:
    """One step of the manifest's audio chain: graph input/output names -> value names."""
    return {"component": component, "inputs": inputs, "outputs": outputs}


class Family:
    """Base class; a family overrides what differs. ``name`` is written as the manifest's source.family."""

    name = ""
    architectures: tuple[str, ...] = ()  # config.json "architectures" entries this family reads
    model_types: tuple[str, ...] = ()  # or config.json "model_type" values
    presets: tuple[str, ...] = ()  # what ``gamma-rt init --family`` can write
    init_options: tuple[str, ...] = ()  # the extra keyword arguments ``init`` takes (CLI flags of gamma-rt init)

    def __init__(self, folder: Path, config: dict):
        self.folder = Path(folder)
        self.config = config

    @classmethod
    def matches(cls, config: dict) -> bool:
        archs = config.get("architectures") or []
        return any(a in cls.architectures for a in archs) or config.get("model_type") in cls.model_types

    # --- what each family declares ---------------------------------------------------------------

    def graphs(self) -> list[GraphSpec]:
        raise CheckpointError(
            f"{self.folder / 'config.json'}: a {self.name} folder has no audio side to export to ONNX"
        )

    def decoder(self, scratch: Path) -> DecoderSpec:
        raise NotImplementedError

    def adapter(self) -> AdapterSpec | None:
        """The LoRA adapter the folder ships unmerged, if any: ``export gguf`` then also writes the base alone
        (``decoder.base``) and the adapter (``lora``) beside the merged ``decoder``."""
        return None

    def manifest_sections(self) -> dict:
        """{"audio": ..., "prompt": ..., "llm": ..., "source": ...} for a new bundle's manifest."""
        raise NotImplementedError

    def hash(self) -> str:
        raise NotImplementedError

    def check(self) -> None:
        """Check weights against config before a long export; errors name what is wrong."""

    @classmethod
    def init(cls, preset: str, out: Path, seed: int = 0, progress=None, **options) -> Path:
        """Write a random folder of ``preset`` in this family's layout into ``out``; returns ``out``."""
        raise CheckpointError(f"gamma-rt init cannot write a {cls.name} folder")

    @classmethod
    def plan_sizes(cls, preset: str) -> dict:
        """What ``gamma-rt plan --preset`` needs of a preset before anything is exported: audio_params,
        enc_tokens, d_audio, n_encoders, tokens_per_second, n_layer, n_kv_heads, head_dim, n_vocab and
        llm_params (the decoder's parameter count; the plan scales it to each GGUF type)."""
        raise CheckpointError(f"gamma-rt plan --preset knows no {cls.name} presets; export a bundle and plan that")
