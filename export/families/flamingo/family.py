"""Audio Flamingo 3 and Music Flamingo, from their published Hugging Face folders.

Both are an AF-Whisper encoder (Whisper-large-v3 shape, then avg-pool 2 and LayerNorm: 750 tokens per 30 s
window), an MLP projector and a Qwen2 decoder. Music Flamingo adds ``<|sound_bos|>``/``<|sound_eos|>``
around the audio and rotary time embeddings (RoTE) before the projector, which depend on the window's
index in the song: the projector graph takes ``window_index``.

Everything is read from the folder: config.json (both rope layouts), the processor config (front end,
max_audio_len), the tokenizer (special-token ids), the chat template and generation_config.json.
"""

from __future__ import annotations

from pathlib import Path

from gamma_rt.errors import CheckpointError
from gamma_rt.manifest import TensorSpec
from gamma_rt.token_count import conv_pool_tokens

from ..registry import register
from ..base import BATCH, DecoderSpec, Family, GraphSpec, chain_step, spec
from ..folder import (
    Weights,
    chat_template,
    decoder_shape,
    eos_strings,
    feature_extractor,
    strip_prefixes,
    token_ids,
    tokenizer_files,
)

# Stored key prefix -> ours. transformers 5 saves the legacy layout (language_model.model.*); loaders
# and other tools may write the new one (model.language_model.*).
LLM_KEYS = {
    "language_model.model.": "model.",
    "model.language_model.": "model.",
    "language_model.lm_head.": "lm_head.",
    "lm_head.": "lm_head.",
}
ENCODER_KEYS = {"audio_tower.": "", "model.audio_tower.": ""}
PROJECTOR_KEYS = {"multi_modal_projector.": "", "model.multi_modal_projector.": ""}
ENCODER_TYPES = ("audioflamingo3_encoder", "musicflamingo_encoder")


@register
class AudioFlamingo3(Family):
    name = "audioflamingo3"
    architectures = ("AudioFlamingo3ForConditionalGeneration",)
    model_types = ("audioflamingo3",)
    presets = ("tiny", "small", "full")
    rotary = False  # RoTE before the projector
    framed = False  # <|sound_bos|> ... <|sound_eos|> around the placeholders

    def __init__(self, folder: Path, config: dict):
        super().__init__(folder, config)
        where = str(self.folder / "config.json")
        self.text = self._sub(config, "text_config", ("qwen2",), where)
        self.audio = self._sub(config, "audio_config", ENCODER_TYPES, where)
        self.shape = decoder_shape(self.text, f"{where}: text_config", "qwen2")
        self.weights = Weights(self.folder)
        self.tokenizer, self.tokenizer_config = tokenizer_files(self.folder)
        self.fe, self.processor, self.fe_path = feature_extractor(self.folder)
        self.template = chat_template(self.folder)
        if self.template is None:
            raise CheckpointError(f"{self.folder / 'chat_template.jinja'}: missing (and no chat_template in the "
                                  "processor or tokenizer config); the prompt is rendered from it")
        self.front_end = self._front_end()

    @staticmethod
    def _sub(config: dict, key: str, types: tuple[str, ...], where: str) -> dict:
        sub = config.get(key)
        if not isinstance(sub, dict):
            raise CheckpointError(f"{where}: field {key} missing")
        if sub.get("model_type") not in types:
            raise CheckpointError(f"{where}: field {key}.model_type is {sub.get('model_type')!r}; expected {types[0]!r}")
        return sub

    # --- reading ----------------------------------------------------------------------------------

    def _front_end(self) -> dict:
        fe, where = self.fe, self.fe_path
        need = ("sampling_rate", "n_fft", "hop_length", "feature_size", "chunk_length")
        missing = [k for k in need if k not in fe]
        if missing:
            raise CheckpointError(f"{where}: feature extractor field(s) {', '.join(missing)} missing")
        rate, hop = fe["sampling_rate"], fe["hop_length"]
        samples = rate * fe["chunk_length"]
        frames = fe.get("nb_max_frames", samples // hop)
        if fe["feature_size"] != self.audio.get("num_mel_bins", 128):
            raise CheckpointError(f"{where}: feature_size {fe['feature_size']} differs from config.json's "
                                  f"audio_config.num_mel_bins {self.audio.get('num_mel_bins', 128)}")
        positions = self.audio.get("max_source_positions", 1500)
        if (frames - 1) // 2 + 1 != positions:
            raise CheckpointError(f"{where}: {frames} frames per window do not fit config.json's "
                                  f"audio_config.max_source_positions {positions}")
        max_seconds = self.processor.get("max_audio_len", 1200 if self.framed else 600)
        return {
            "sample_rate": rate,
            "n_fft": fe["n_fft"],
            "hop_length": hop,
            "n_mels": fe["feature_size"],
            "window_seconds": fe["chunk_length"],
            "window_samples": samples,
            "window_frames": frames,
            "encoder_tokens_per_window": positions,
            "tokens_per_window": conv_pool_tokens(frames),
            "pool_stride": 2,
            "max_seconds": max_seconds,
            "token_count": {"rule": "conv_pool"},
        }

    def _token(self, id_field: str, text_field: str) -> str:
        """The text of a special token: config.json's id field, checked against the processor config."""
        ids = token_ids(self.tokenizer)
        by_id = {i: t for t, i in ids.items()}
        tid = self.config.get(id_field)
        if tid not in by_id:
            raise CheckpointError(f"{self.folder / 'config.json'}: field {id_field} {tid} is not in tokenizer.json")
        named = self.processor.get(text_field)
        if named is not None and ids.get(named) != tid:
            raise CheckpointError(f"{self.folder / 'processor_config.json'}: field {text_field} {named!r} has id "
                                  f"{ids.get(named)} in tokenizer.json, config.json's {id_field} says {tid}")
        return by_id[tid]

    # --- what the exporters ask ----------------------------------------------------------------

    def check(self) -> None:
        for table, what in ((ENCODER_KEYS, "audio_tower"), (PROJECTOR_KEYS, "multi_modal_projector")):
            if not strip_prefixes(self.weights.where, table):
                raise CheckpointError(f"{self.folder}: no {what}.* tensors in the safetensors files")

    def graphs(self) -> list[GraphSpec]:
        a = self.front_end
        d, n_embd, tokens = self.audio["hidden_size"], self.shape.hidden_size, a["tokens_per_window"]
        heads = self.audio["num_attention_heads"]
        encoder = GraphSpec(
            "encoder",
            [spec("mel", a["n_mels"], a["window_frames"]), spec("mel_mask", a["window_frames"], dtype="int64")],
            [spec("hidden", tokens, d)],
            heads, d, build=self._encoder,
        )
        inputs = [spec("hidden", tokens, d)]
        if self.rotary:
            inputs.append(TensorSpec("window_index", [BATCH], "int64"))
        projector = GraphSpec("projector", inputs, [spec("embeddings", tokens, n_embd)], heads, d,
                              build=self._projector, fp32_scopes=("/rote/",) if self.rotary else ())
        return [encoder, projector]

    def _load(self, module, table: dict[str, str]):
        import torch

        names = strip_prefixes(self.weights.where, table)
        expected = set(module.state_dict())
        missing, unexpected = sorted(expected - set(names)), sorted(set(names) - expected)
        if missing or unexpected:
            raise CheckpointError(f"{self.folder}: {type(module).__name__} weights do not fit config.json: "
                                  f"missing {missing[:6] or 'none'}; unexpected {unexpected[:6] or 'none'}")
        state = {}
        for ours, key in names.items():
            t = self.weights.tensor(key)
            if tuple(t.shape) != tuple(module.state_dict()[ours].shape):
                raise CheckpointError(f"{self.folder}: {key} has shape {tuple(t.shape)}, config.json expects "
                                      f"{tuple(module.state_dict()[ours].shape)}")
            state[ours] = t.to(torch.float32)
        module.load_state_dict(state, strict=True, assign=True)
        return module.eval()

    def _hf_config(self):
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(self.folder)

    def _encoder(self):
        import torch
        from transformers.models.audioflamingo3.modeling_audioflamingo3 import AudioFlamingo3Encoder

        from .graphs import MaskedEncoder

        audio_config = self._hf_config().audio_config
        audio_config._attn_implementation = "eager"  # traces to MatMul/Add/Softmax, which the fusion matches
        with torch.device("meta"):
            tower = AudioFlamingo3Encoder(audio_config)
        return MaskedEncoder(self._load(tower, ENCODER_KEYS))

    def _mlp(self, config):
        import torch
        from transformers.models.audioflamingo3.modeling_audioflamingo3 import AudioFlamingo3MultiModalProjector

        with torch.device("meta"):
            mlp = AudioFlamingo3MultiModalProjector(config)
        return self._load(mlp, PROJECTOR_KEYS)

    def _projector(self):
        from .graphs import Projector

        return Projector(self._mlp(self._hf_config()))

    def decoder(self, scratch: Path) -> DecoderSpec:
        names = strip_prefixes(self.weights.where, LLM_KEYS)
        if self.shape.tie_word_embeddings:
            names.pop("lm_head.weight", None)
        tensors = {ours: (self.weights.where[key], key) for ours, key in names.items()}
        return DecoderSpec("qwen2", self.shape, tensors, self.folder, self.template, f"{self.folder.name}-decoder")

    def chain(self) -> list[dict]:
        projector_inputs = {"hidden": "hidden"}
        if self.rotary:
            projector_inputs["window_index"] = "window_index"
        return [
            chain_step("encoder", {"mel": "mel", "mel_mask": "mel_mask"}, {"hidden": "hidden"}),
            chain_step("projector", projector_inputs, {"embeddings": "embeddings"}),
        ]

    def manifest_sections(self) -> dict:
        placeholder = self._token("audio_token_id", "audio_token")
        start = self._token("audio_bos_token_id", "audio_bos_token") if self.framed else ""
        end = self._token("audio_eos_token_id", "audio_eos_token") if self.framed else ""
        return {
            "audio": {**self.front_end, "chain": self.chain()},
            "prompt": {
                "chat_template": self.template,
                "audio_placeholder": placeholder,
                "audio_start": start,
                "audio_end": end,
                "stop": eos_strings(self.folder, self.tokenizer, self.tokenizer_config),
            },
            "llm": {"arch": "qwen2", "n_embd": self.shape.hidden_size, "n_vocab": self.shape.vocab_size,
                    "n_layer": self.shape.num_hidden_layers},
            "source": {"family": self.name, "preset": self.folder.name},
        }

    def hash(self) -> str:
        return self.weights.hash()

    @classmethod
    def init(cls, preset: str, out: Path, seed: int = 0, progress=None, **options) -> Path:
        from .writer import write_flamingo

        return write_flamingo(cls.name, preset, out, seed, progress)


@register
class MusicFlamingo(AudioFlamingo3):
    """Music Flamingo (2601 and the earlier release): sound_bos/eos framing and RoTE before the projector."""

    name = "musicflamingo"
    architectures = ("MusicFlamingoForConditionalGeneration",)
    model_types = ("musicflamingo",)
    rotary = True
    framed = True

    def __init__(self, folder: Path, config: dict):
        super().__init__(folder, config)
        rope = config.get("rope_parameters") or {}
        kind = rope.get("rope_type", "default")
        if kind != "default":
            raise CheckpointError(f"{self.folder / 'config.json'}: field rope_parameters.rope_type is {kind!r}; "
                                  "RoTE is exported for 'default' only")

    def _projector(self):
        import torch
        from transformers.models.musicflamingo.modeling_musicflamingo import MusicFlamingoRotaryEmbedding

        from .graphs import Projector, RotaryTime

        config = self._hf_config()
        with torch.device("cpu"):
            pos_emb = MusicFlamingoRotaryEmbedding(config)
        rote = RotaryTime(pos_emb, config.audio_frame_step, self.front_end["tokens_per_window"])
        return Projector(self._mlp(config), rote)
