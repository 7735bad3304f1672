"""OpenMU (Sony): AudioMAE ViT-B/16 on a Kaldi fbank, pooling, mlp2x_gelu, Llama 3 with a PEFT LoRA adapter.

The folder is OpenMU's checkpoint folder (LLaVA's ``LlavaLlamaForCausalLM``, model_type ``llava_llama``):
config.json, the PEFT adapter (adapter_config.json + adapter_model.safetensors), non_lora_trainables.bin
(the projector). The Llama 3 base is the folder adapter_config.json's ``base_model_name_or_path`` names
(relative to the checkpoint folder), else ``base/``; AudioMAE's ``vitb_finetuned.pth`` is config.json's
``audio_pretrained_ckpt_path`` (its file name, in the folder). NOTES.md says what is read and what inferred.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from gamma_rt.errors import CheckpointError

from ..registry import register
from ..base import AdapterSpec, DecoderSpec, Family, GraphSpec, chain_step, spec
from ..folder import CONFIG, Weights, decoder_shape, read_json, tokenizer_files
from . import prompt
from .lora import LoraAdapter

FBANK_MEAN, FBANK_STD = -4.2677393, 4.5689974  # AudioSet statistics, AudioMAE's normalization
SEGMENT_PATCHES = 512  # 1024 x 128 frames in 16 x 16 patches
HEAD_DIM = 64  # ViT-B/16: 12 heads of 64 channels; AudioMAE's checkpoint does not record the head count


@register
class OpenMU(Family):
    name = "openmu"
    architectures = ("LlavaLlamaForCausalLM",)
    model_types = ("llava_llama",)
    presets = ("tiny", "small", "full")

    def __init__(self, folder: Path, config: dict):
        super().__init__(folder, config)
        self.where = str(self.folder / CONFIG)
        self._check_config()
        self.lora = LoraAdapter.open(self.folder)
        self.base = self._base_folder()
        self.base_config = read_json(self.base / CONFIG)
        self.shape = decoder_shape(self.base_config, str(self.base / CONFIG), "llama")
        self.audio_ckpt = self.folder / Path(config.get("audio_pretrained_ckpt_path") or "vitb_finetuned.pth").name
        if not self.audio_ckpt.is_file():
            raise CheckpointError(f"{self.where}: field audio_pretrained_ckpt_path names {self.audio_ckpt.name}, "
                                  f"missing from {self.folder} (AudioMAE's vitb_finetuned.pth goes there)")
        self.tokens_per_segment = SEGMENT_PATCHES // int(config.get("audio_num_pooling_tokens", 8))

    def _check_config(self) -> None:
        c = self.config
        if c.get("mm_projector_type") != "mlp2x_gelu":
            raise CheckpointError(f"{self.where}: field mm_projector_type is {c.get('mm_projector_type')!r}; "
                                  "OpenMU's is 'mlp2x_gelu'")
        if "mae_vit" not in str(c.get("mm_vision_tower", "")):
            raise CheckpointError(f"{self.where}: field mm_vision_tower is {c.get('mm_vision_tower')!r}; "
                                  "expected AudioMAE's ('mae_vit_...')")
        if c.get("audio_input_target_length", 3072) != 3072:
            raise CheckpointError(f"{self.where}: field audio_input_target_length is "
                                  f"{c['audio_input_target_length']}; AudioMAE takes 3 x 1024 = 3072 frames")
        pooling = c.get("audio_num_pooling_tokens", 8)
        if not isinstance(pooling, int) or pooling <= 0 or SEGMENT_PATCHES % pooling:
            raise CheckpointError(f"{self.where}: field audio_num_pooling_tokens {pooling!r} must divide 512")

    def _base_folder(self) -> Path:
        named = self.lora.base_name
        for candidate in ([self.folder / named] if named else []) + [self.folder / "base"]:
            if (candidate / CONFIG).is_file():
                return candidate
        raise CheckpointError(f"{self.folder / 'adapter_config.json'}: field base_model_name_or_path is {named!r}, "
                              f"not a folder beside the adapter; put the Llama 3 base in {self.folder / 'base'}")

    # --- the audio side ------------------------------------------------------------------------------

    def _audio_state(self) -> dict:
        import torch

        try:
            state = torch.load(self.audio_ckpt, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises several types for a file that is not a checkpoint
            raise CheckpointError(f"{self.audio_ckpt}: not a readable torch checkpoint ({e})") from None
        if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
            raise CheckpointError(f"{self.audio_ckpt}: expected {{'model': state dict}} as AudioMAE saves it")
        return state["model"]

    def _mae(self):
        import torch

        from .audiomae import AudioMAE

        state = self._audio_state()
        if "cls_token" not in state:
            raise CheckpointError(f"{self.audio_ckpt}: no cls_token; not AudioMAE's ViT")
        dim = state["cls_token"].shape[-1]
        depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
        classes = state["head.weight"].shape[0] if "head.weight" in state else 527
        with torch.device("meta"):
            mae = AudioMAE(dim, depth, max(1, dim // HEAD_DIM), state["pos_embed"].shape[1] - 1, classes)
        try:
            mae.load_state_dict({k: v.float() for k, v in state.items()}, strict=True, assign=True)
        except RuntimeError as e:
            raise CheckpointError(f"{self.audio_ckpt}: weights do not fit AudioMAE's ViT "
                                  f"({str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else e})") from None
        return mae.eval()

    def projector_state(self) -> dict:
        """non_lora_trainables.bin's projector, as LLaVA's loader strips it: {"0.weight": ..., "2.bias": ...}."""
        import torch

        path = self.folder / "non_lora_trainables.bin"
        if not path.is_file():
            raise CheckpointError(f"{path}: missing; it holds the projector (mm_projector)")
        raw = torch.load(path, map_location="cpu", weights_only=True)
        prefix = "mm_projector."
        out = {}
        for key, value in raw.items():
            if prefix in key:
                out[key.split(prefix, 1)[1]] = value.float()
        if set(out) != {"0.weight", "0.bias", "2.weight", "2.bias"}:
            raise CheckpointError(f"{path}: mm_projector tensors are {sorted(out)}; mlp2x_gelu has 0.* and 2.*")
        return out

    def _encoder(self):
        from .audiomae import Encoder

        return Encoder(self._mae(), self.tokens_per_segment)

    def _projector(self):
        from .audiomae import Projector

        state = self.projector_state()
        n_embd, d = state["0.weight"].shape
        if d != self.d_audio or n_embd != self.shape.hidden_size:
            raise CheckpointError(f"{self.folder / 'non_lora_trainables.bin'}: mm_projector.0.weight is "
                                  f"{tuple(state['0.weight'].shape)}; config.json says ({self.shape.hidden_size}, "
                                  f"{self.d_audio})")
        projector = Projector(d, n_embd)
        projector.mlp.load_state_dict(state, strict=True)
        return projector.eval()

    @property
    def d_audio(self) -> int:
        return int(self.config.get("mm_hidden_size", 768))

    @property
    def tokens(self) -> int:
        return 3 * self.tokens_per_segment

    def graphs(self) -> list[GraphSpec]:
        d, n_embd, heads = self.d_audio, self.shape.hidden_size, max(1, self.d_audio // HEAD_DIM)
        encoder = GraphSpec("encoder", [spec("mel", 128, 3072)], [spec("hidden", self.tokens, d)], heads, d,
                            build=self._encoder)
        projector = GraphSpec("projector", [spec("hidden", self.tokens, d)],
                              [spec("embeddings", self.tokens, n_embd)], heads, d, build=self._projector)
        return [encoder, projector]

    def check(self) -> None:
        self.projector_state()

    # --- the decoder -------------------------------------------------------------------------------

    def decoder(self, scratch: Path, merged: bool = True) -> DecoderSpec:
        """The Llama 3 decoder: with the LoRA merged (``decoder``), or the base alone (``decoder.base``)."""
        weights = Weights(self.base)
        tensors = {key: (weights.where[key], key) for key in weights.where}
        name = f"{self.folder.name}-decoder" + ("" if merged else "-base")
        return DecoderSpec("llama", self.shape, tensors, self.base, prompt.CHAT_TEMPLATE, name,
                           extra={"pre_tokenizer": "llama-bpe"}, merge=self.lora.merge if merged else None)

    def adapter(self) -> AdapterSpec:
        lora = self.lora
        return AdapterSpec("llama", self.shape, sorted(lora.pairs), lora.matrices, lora.rank,
                           lora.scale * lora.rank, f"{self.folder.name}-lora", self.base_hash())

    def base_hash(self) -> str:
        return _sha256([self.base / CONFIG, *Weights(self.base).files])

    def chain(self) -> list[dict]:
        return [chain_step("encoder", {"mel": "mel"}, {"hidden": "hidden"}),
                chain_step("projector", {"hidden": "hidden"}, {"embeddings": "embeddings"})]

    def manifest_sections(self) -> dict:
        tokenizer_files(self.base)  # both files are needed by the GGUF; say so before any export
        return {
            "audio": {
                "sample_rate": 16000, "n_fft": 400, "hop_length": 160, "n_mels": 128,
                "window_seconds": 30.72, "window_frames": 3072, "tokens_per_window": self.tokens,
                "max_seconds": 30.72, "token_count": "all", "front_end": "kaldi_fbank",
                "front_end_options": {"mean": FBANK_MEAN, "std": FBANK_STD},
                "segments": 3, "pool_tokens_per_segment": self.tokens_per_segment, "chain": self.chain(),
            },
            "prompt": {
                "chat_template": prompt.CHAT_TEMPLATE,
                "audio_placeholder": prompt.IMAGE,
                "stop": [prompt.SEP2, prompt.EOT, prompt.EOS],
                "template_vars": {"bos_token": prompt.BOS},
            },
            "llm": {"arch": "llama", "n_embd": self.shape.hidden_size, "n_vocab": self.shape.vocab_size,
                    "n_layer": self.shape.num_hidden_layers},
            "source": {"family": self.name, "preset": self.folder.name},
        }

    def hash(self) -> str:
        """sha256 over the checkpoint folder's files, AudioMAE's and the base's config + weights."""
        return _sha256([self.folder / CONFIG, *self.lora.files, self.folder / "non_lora_trainables.bin",
                        self.audio_ckpt, self.base / CONFIG, *Weights(self.base).files])

    @classmethod
    def init(cls, preset: str, out: Path, seed: int = 0, progress=None, **options) -> Path:
        from .init import write_openmu

        return write_openmu(preset, out, seed, progress)


def _sha256(files: list[Path]) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 24), b""):
                h.update(block)
    return h.hexdigest()
