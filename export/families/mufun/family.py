"""The MuFun folder: config.json (a TinyLlavaConfig), safetensors under MuFun's module names, a Qwen3 tokenizer.

Reading it checks every field the export depends on; a folder that differs is refused in one line naming the
field. The facts MuFun's code fixes (not read from the folder) are named once below, each with the file of
github laitselec/MuFun it comes from (NOTES.md has the lines).

    config.json       architectures [TinyLlavaForConditionalGeneration], model_type tinyllava,
                      connector_type blp_<i>i_<h>x, vision_hidden_size, hidden_size, text_config (qwen3),
                      vision_config (whisper)
    weights           vision_tower._vision_tower.*  WhisperEncoder (Whisper-large-v3)
                      connector._connector.linear1/linear2  the projector
                      language_model.model.*, language_model.lm_head.*  Qwen3ForCausalLM
"""

from __future__ import annotations

import re
from pathlib import Path

from gamma_rt.errors import CheckpointError

from ..registry import register
from ..base import DecoderSpec, Family, GraphSpec, chain_step, spec
from ..folder import Weights, decoder_shape, eos_strings, read_json, strip_prefixes, tokenizer_files

ARCHITECTURE = "TinyLlavaForConditionalGeneration"
MODEL_TYPE = "tinyllava"
# tinyllava/model/vision_tower/whisper.py: the tower's hidden states concatenated, then AvgPool1d(5, 5)
FEATURE_LAYERS = (0, 7, 15, 32)
POOL_STRIDE = 5
# tinyllava/data/image_preprocess.py: 16 kHz, 30 s chunks, a chunk of 0.5 s or less dropped
SAMPLE_RATE = 16000
CHUNK_SECONDS = 30
DROP_SECONDS = 0.5
# tinyllava/model/connector/blp.py reads "<ix>i" and "<hx>x" out of connector_type: linear1 is
# (vision_hidden_size * ix) -> (hx * that), GELU, linear2 -> hidden_size.
CONNECTOR = re.compile(r"^blp_(\d+)i_(\d+)x$")
# The tower's processor is openai/whisper-large-v3's (whisper.py loads it from the hub, not the folder).
WHISPER_FRONT_END = {"n_fft": 400, "hop_length": 160, "chunk_length": CHUNK_SECONDS, "sampling_rate": SAMPLE_RATE}

# stored prefix -> ours (WhisperEncoder's, the connector's, Qwen3ForCausalLM's own names)
ENCODER_KEYS = {"vision_tower._vision_tower.": ""}
PROJECTOR_KEYS = {"connector._connector.": ""}
LLM_KEYS = {"language_model.model.": "model.", "language_model.lm_head.": "lm_head."}


def pooled_tokens(positions: int) -> int:
    """AvgPool1d(POOL_STRIDE, POOL_STRIDE) over the encoder's ``positions`` frames (1500 -> 300)."""
    return (positions - POOL_STRIDE) // POOL_STRIDE + 1


@register
class MuFun(Family):
    name = "mufun"
    architectures = (ARCHITECTURE,)
    model_types = (MODEL_TYPE,)
    presets = ("tiny", "full")

    def __init__(self, folder: Path, config: dict):
        super().__init__(folder, config)
        self.where = where = str(self.folder / "config.json")
        self.text = _sub(config, "text_config", "qwen3", where)
        self.vision = _sub(config, "vision_config", "whisper", where)
        self.shape = decoder_shape(self.text, f"{where}: text_config", "qwen3")
        self.ix, self.hx = _connector(config, where)
        self._check_widths()
        self.front_end = self._front_end()
        self.weights = Weights(self.folder)
        self.tokenizer, self.tokenizer_config = tokenizer_files(self.folder)

    # --- reading ----------------------------------------------------------------------------------

    def _check_widths(self) -> None:
        v, where = self.vision, self.where
        for key in ("d_model", "encoder_layers", "encoder_attention_heads", "encoder_ffn_dim", "num_mel_bins"):
            if not isinstance(v.get(key), int):
                raise CheckpointError(f"{where}: field vision_config.{key} missing")
        if self.config.get("vision_hidden_size") != v["d_model"]:
            raise CheckpointError(f"{where}: field vision_hidden_size is {self.config.get('vision_hidden_size')!r}; "
                                  f"vision_config.d_model is {v['d_model']}")
        if self.config.get("hidden_size", self.shape.hidden_size) != self.shape.hidden_size:
            raise CheckpointError(f"{where}: field hidden_size is {self.config['hidden_size']}; "
                                  f"text_config.hidden_size is {self.shape.hidden_size}")
        if v["encoder_layers"] < max(FEATURE_LAYERS):
            raise CheckpointError(f"{where}: field vision_config.encoder_layers is {v['encoder_layers']}; MuFun "
                                  f"concatenates the hidden states {', '.join(map(str, FEATURE_LAYERS))}")
        if v.get("activation_function", "gelu") != "gelu":
            raise CheckpointError(f"{where}: field vision_config.activation_function is "
                                  f"{v['activation_function']!r}; Whisper's encoder uses 'gelu'")

    def _front_end(self) -> dict:
        """Whisper-large-v3's front end; a preprocessor_config.json in the folder must agree with it."""
        fe = dict(WHISPER_FRONT_END, feature_size=self.vision["num_mel_bins"])
        path = self.folder / "preprocessor_config.json"
        for key, value in (read_json(path, required=False) or {}).items():
            if key in fe and value != fe[key]:
                raise CheckpointError(f"{path}: field {key} is {value!r}; MuFun's Whisper front end uses {fe[key]!r}")
        positions = self.vision.get("max_source_positions", 1500)
        frames = SAMPLE_RATE * CHUNK_SECONDS // fe["hop_length"]
        if positions * 2 != frames:
            raise CheckpointError(f"{self.where}: field vision_config.max_source_positions is {positions}; a "
                                  f"{CHUNK_SECONDS} s chunk has {frames} mel frames, {frames // 2} after conv2")
        return {
            "sample_rate": SAMPLE_RATE,
            "n_fft": fe["n_fft"],
            "hop_length": fe["hop_length"],
            "n_mels": fe["feature_size"],
            "window_seconds": CHUNK_SECONDS,
            "window_frames": frames,
            "encoder_tokens_per_window": positions,
            "tokens_per_window": pooled_tokens(positions),
            "pool_stride": POOL_STRIDE,
            "feature_layers": list(FEATURE_LAYERS),
            "max_seconds": None,
            "token_count": {"rule": "whole", "min_seconds": DROP_SECONDS},
        }

    @property
    def feature_width(self) -> int:
        """Width of the concatenated hidden states: vision_hidden_size * ix (5120 for Whisper-large-v3)."""
        return self.vision["d_model"] * self.ix

    # --- what the exporters ask ----------------------------------------------------------------

    def check(self) -> None:
        for table, what in ((ENCODER_KEYS, "vision_tower._vision_tower"), (PROJECTOR_KEYS, "connector._connector")):
            if not strip_prefixes(self.weights.where, table):
                raise CheckpointError(f"{self.folder}: no {what}.* tensors in the safetensors files")

    def graphs(self) -> list[GraphSpec]:
        a = self.front_end
        tokens, width, d = a["tokens_per_window"], self.feature_width, self.vision["d_model"]
        heads = self.vision["encoder_attention_heads"]
        encoder = GraphSpec("encoder", [spec("mel", a["n_mels"], a["window_frames"])], [spec("hidden", tokens, width)],
                            heads, d, build=self.encoder_module)
        projector = GraphSpec("projector", [spec("hidden", tokens, width)],
                              [spec("embeddings", tokens, self.shape.hidden_size)], heads, d,
                              build=self.projector_module)
        return [encoder, projector]

    def whisper_config(self):
        from transformers import WhisperConfig

        config = WhisperConfig(**{k: v for k, v in self.vision.items() if k not in ("architectures", "model_type")})
        config._attn_implementation = "eager"  # traces to MatMul/Softmax, which the attention fusion matches
        return config

    def encoder_module(self):
        """The WhisperEncoder (float32) in the graph that picks and pools its hidden states."""
        import torch
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        from .graphs import StackedEncoder

        with torch.device("meta"):
            tower = WhisperEncoder(self.whisper_config())
        return StackedEncoder(self.load(tower, ENCODER_KEYS), FEATURE_LAYERS, POOL_STRIDE)

    def projector_module(self):
        import torch

        from .graphs import Connector

        with torch.device("meta"):
            connector = Connector(self.feature_width, self.hx, self.shape.hidden_size)
        return self.load(connector, PROJECTOR_KEYS)

    def load(self, module, table: dict[str, str]):
        """``module`` (built on the meta device) with the folder's float32 tensors under ``table``."""
        import torch

        names = strip_prefixes(self.weights.where, table)
        want = module.state_dict()
        missing, unexpected = sorted(set(want) - set(names)), sorted(set(names) - set(want))
        if missing or unexpected:
            raise CheckpointError(f"{self.folder}: {type(module).__name__} weights do not fit config.json: "
                                  f"missing {missing[:6] or 'none'}; unexpected {unexpected[:6] or 'none'}")
        state = {}
        for ours, key in names.items():
            t = self.weights.tensor(key)
            if tuple(t.shape) != tuple(want[ours].shape):
                raise CheckpointError(f"{self.folder}: {key} has shape {tuple(t.shape)}, config.json expects "
                                      f"{tuple(want[ours].shape)}")
            state[ours] = t.to(torch.float32)
        module.load_state_dict(state, strict=True, assign=True)
        return module.eval()

    def decoder(self, scratch: Path) -> DecoderSpec:
        from .prompt import CHAT_TEMPLATE

        names = strip_prefixes(self.weights.where, LLM_KEYS)
        if self.shape.tie_word_embeddings:
            names.pop("lm_head.weight", None)
        tensors = {ours: (self.weights.where[key], key) for ours, key in names.items()}
        return DecoderSpec("qwen3", self.shape, tensors, self.folder, CHAT_TEMPLATE, f"{self.folder.name}-decoder")

    def manifest_sections(self) -> dict:
        from .prompt import prompt_section

        chain = [chain_step("encoder", {"mel": "mel"}, {"hidden": "hidden"}),
                 chain_step("projector", {"hidden": "hidden"}, {"embeddings": "embeddings"})]
        return {
            "audio": {**self.front_end, "chain": chain},
            "prompt": prompt_section(eos_strings(self.folder, self.tokenizer, self.tokenizer_config)),
            "llm": {"arch": "qwen3", "n_embd": self.shape.hidden_size, "n_vocab": self.shape.vocab_size,
                    "n_layer": self.shape.num_hidden_layers},
            "source": {"family": self.name, "preset": self.folder.name},
        }

    def hash(self) -> str:
        return self.weights.hash()

    @classmethod
    def init(cls, preset: str, out: Path, seed: int = 0, progress=None, **options) -> Path:
        from .random_folder import write_mufun

        return write_mufun(preset, out, seed, progress)


def _sub(config: dict, key: str, model_type: str, where: str) -> dict:
    sub = config.get(key)
    if not isinstance(sub, dict):
        raise CheckpointError(f"{where}: field {key} missing")
    if sub.get("model_type") != model_type:
        raise CheckpointError(f"{where}: field {key}.model_type is {sub.get('model_type')!r}; MuFun's is "
                              f"{model_type!r}")
    return sub


def _connector(config: dict, where: str) -> tuple[int, int]:
    """(ix, hx) of connector_type ``blp_<ix>i_<hx>x``; ix must be the number of concatenated hidden states."""
    kind = config.get("connector_type")
    match = CONNECTOR.match(kind) if isinstance(kind, str) else None
    if match is None:
        raise CheckpointError(f"{where}: field connector_type is {kind!r}; MuFun's connector is 'blp_4i_2x' "
                              "(blp_<i>i_<h>x)")
    ix, hx = int(match[1]), int(match[2])
    if ix != len(FEATURE_LAYERS):
        raise CheckpointError(f"{where}: field connector_type {kind!r} takes {ix} hidden states; MuFun's tower "
                              f"concatenates {len(FEATURE_LAYERS)}")
    return ix, hx
