"""The checkpoint folder: ``config.json`` + safetensors shards + tokenizer files, HF style.

Keys are ``temporal_encoder.*`` / ``global_encoder.*`` (transformers WhisperEncoder keys), ``fusion.*``,
``projector.*`` and ``llm.*`` (transformers Qwen3ForCausalLM keys). Tensors are written and read one at a
time, so a full-size checkpoint (about 19 GB in bf16) is made and exported in bounded memory.
"""

from __future__ import annotations

import hashlib
from contextlib import ExitStack
from pathlib import Path
from typing import Iterator

import torch
from safetensors import safe_open

from gamma_rt.errors import CheckpointError

from ...weights import ShardWriter, generator, sinusoids
from ..folder import map_key
from .config import GammaConfig
from .model import GammaModel


# Stock checkpoints' key prefixes -> ours. Longest prefix wins; keys matching no row are skipped.
WHISPER_KEY_MAP = {"model.encoder.": "{expert}.", "encoder.": "{expert}."}
QWEN3_KEY_MAP = {"model.": "llm.model.", "lm_head.": "llm.lm_head."}


def model_skeleton(cfg: GammaConfig) -> GammaModel:
    """The model on the meta device: names and shapes, no memory."""
    with torch.device("meta"):
        return GammaModel(cfg)


def expected_shapes(cfg: GammaConfig) -> dict[str, tuple[int, ...]]:
    """Every key the checkpoint must hold, with its shape (tied lm_head excluded)."""
    state = model_skeleton(cfg).state_dict()
    if cfg.llm.tie_word_embeddings:
        state.pop("llm.lm_head.weight", None)
    return {k: tuple(v.shape) for k, v in state.items()}


def random_tensor(name: str, shape: tuple[int, ...], cfg: GammaConfig, seed: int, std: float) -> torch.Tensor:
    """A deterministic random tensor for ``name``: the same seed gives the same value, whatever the order."""
    gen = generator(name, seed)
    leaf = name.rsplit(".", 1)[-1]
    if name.endswith("embed_positions.weight"):
        return sinusoids(*shape)
    if name.endswith("injector_gate"):
        return torch.full(shape, float(cfg.fusion.injector_gate_init))
    parent = name.rsplit(".", 2)[-2] if name.count(".") >= 1 else ""
    if "norm" in parent:  # LayerNorm / RMSNorm: identity at init
        return torch.ones(shape) if leaf == "weight" else torch.zeros(shape)
    if leaf == "bias":
        return torch.zeros(shape)
    return torch.randn(shape, generator=gen) * std


def write_random_checkpoint(
    cfg: GammaConfig,
    out: str | Path,
    seed: int = 0,
    dtype: torch.dtype | None = None,
    std: float | None = None,
    sources: dict[str, "StockSource"] | None = None,
    progress=None,
) -> Path:
    """Write config.json and shards; tensors are made (or copied from ``sources``) one at a time."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dtype = dtype or (torch.float32 if cfg.preset == "tiny" else torch.bfloat16)
    std = std if std is not None else (0.2 if cfg.preset == "tiny" else 0.02)
    shapes = expected_shapes(cfg)
    sources = sources or {}
    cfg.save(out)

    writer = ShardWriter(out)
    for name, shape in (progress or (lambda it, **_: it))(list(shapes.items()), description="weights"):
        tensor = None
        for src in sources.values():
            tensor = src.get(name)
            if tensor is not None:
                break
        if tensor is None:
            tensor = random_tensor(name, shape, cfg, seed, std)
        if tuple(tensor.shape) != shape:
            raise CheckpointError(f"{name}: stock weight has shape {tuple(tensor.shape)}, config expects {shape}")
        writer.add(name, tensor.to(dtype).contiguous())
    writer.close()
    return out


class StockSource:
    """Tensors of a stock HF checkpoint folder (whisper-large-v3 or Qwen3), renamed by a key-map table."""

    def __init__(self, folder: str | Path, key_map: dict[str, str]):
        self.folder = Path(folder)
        files = sorted(self.folder.glob("*.safetensors"))
        if not files:
            raise CheckpointError(f"{self.folder}: no *.safetensors files")
        self._where: dict[str, tuple[Path, str]] = {}
        for f in files:
            with safe_open(f, "pt") as sf:
                for key in sf.keys():
                    ours = map_key(key, key_map)
                    if ours is not None:
                        self._where[ours] = (f, key)
        if not self._where:
            raise CheckpointError(f"{self.folder}: no tensor matches the expected key names")

    def get(self, name: str) -> torch.Tensor | None:
        if name not in self._where:
            return None
        f, key = self._where[name]
        with safe_open(f, "pt") as sf:
            return sf.get_tensor(key)


def whisper_source(folder: str | Path) -> list[StockSource]:
    """One stock Whisper checkpoint feeds both experts."""
    return [
        StockSource(folder, {k: v.format(expert=e) for k, v in WHISPER_KEY_MAP.items()})
        for e in ("temporal_encoder", "global_encoder")
    ]


def qwen3_source(folder: str | Path) -> StockSource:
    return StockSource(folder, QWEN3_KEY_MAP)


class Checkpoint:
    """A checkpoint folder opened lazily: config plus a key -> shard index. Nothing is loaded until asked."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise CheckpointError(f"{self.folder}: checkpoint folder not found")
        self.config = GammaConfig.load(self.folder)
        self._where: dict[str, Path] = {}
        files = sorted(self.folder.glob("*.safetensors"))
        if not files:
            raise CheckpointError(f"{self.folder}: no *.safetensors weight files")
        for f in files:
            try:
                with safe_open(f, "pt") as sf:
                    for key in sf.keys():
                        self._where[key] = f
            except Exception as e:  # safetensors raises its own error types for corrupt headers
                raise CheckpointError(f"{f}: not a readable safetensors file ({e})") from None

    def keys(self) -> list[str]:
        return list(self._where)

    def tensor(self, key: str) -> torch.Tensor:
        if key not in self._where:
            raise CheckpointError(f"{self.folder}: missing tensor {key}")
        with safe_open(self._where[key], "pt") as sf:
            return sf.get_tensor(key)

    def tensors(self, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
        """(key, tensor) pairs under ``prefix``, one shard open at a time."""
        by_file: dict[Path, list[str]] = {}
        for k, f in self._where.items():
            if k.startswith(prefix):
                by_file.setdefault(f, []).append(k)
        for f, keys in by_file.items():
            with safe_open(f, "pt") as sf:
                for k in keys:
                    yield k, sf.get_tensor(k)

    def verify(self) -> None:
        """Check every key and shape against the config; one error lists all that is wrong."""
        expected = expected_shapes(self.config)
        problems = []
        missing = sorted(set(expected) - set(self._where))
        unexpected = sorted(set(self._where) - set(expected) - {"llm.lm_head.weight"})
        if missing:
            problems.append(f"missing {len(missing)}: {_listing(missing)}")
        if unexpected:
            problems.append(f"unexpected {len(unexpected)}: {_listing(unexpected)}")
        wrong = []
        for f in set(self._where.values()):
            with safe_open(f, "pt") as sf:
                for k in sf.keys():
                    if k in expected:
                        shape = tuple(sf.get_slice(k).get_shape())
                        if shape != expected[k]:
                            wrong.append(f"{k} {shape} (config expects {expected[k]})")
        if wrong:
            problems.append(f"wrong shape {len(wrong)}: {_listing(sorted(wrong))}")
        if problems:
            raise CheckpointError(f"{self.folder}: weights do not fit config.json; " + "; ".join(problems))

    def load_module(self, module: torch.nn.Module, prefix: str, dtype: torch.dtype = torch.float32):
        """Fill ``module`` (built on any device, meta included) with the tensors under ``prefix``."""
        expected = {prefix + k: tuple(v.shape) for k, v in module.state_dict().items()}
        if prefix == "llm." and self.config.llm.tie_word_embeddings:
            expected.pop("llm.lm_head.weight", None)
        present = {k for k in self._where if k.startswith(prefix)}
        missing = sorted(set(expected) - present)
        unexpected = sorted(present - set(expected) - {"llm.lm_head.weight"})
        if missing or unexpected:
            raise CheckpointError(
                f"{self.folder}: {prefix}* keys do not fit: missing {_listing(missing)}; "
                f"unexpected {_listing(unexpected)}"
            )
        state = {}
        for k, t in self.tensors(prefix):
            if k not in expected:
                continue
            if tuple(t.shape) != expected[k]:
                raise CheckpointError(f"{self.folder}: {k} has shape {tuple(t.shape)}, expected {expected[k]}")
            state[k[len(prefix):]] = t.to(dtype)
        module.load_state_dict(state, strict=False, assign=True)
        if prefix == "llm." and self.config.llm.tie_word_embeddings:
            module.tie_weights()
        return module.eval()

    def model(self, dtype: torch.dtype = torch.float32) -> GammaModel:
        """The whole model, loaded and checked."""
        self.verify()
        model = model_skeleton(self.config)
        for prefix, sub in [
            ("temporal_encoder.", model.temporal_encoder),
            ("global_encoder.", model.global_encoder),
            ("fusion.", model.fusion),
            ("projector.", model.projector),
            ("llm.", model.llm),
        ]:
            self.load_module(sub, prefix, dtype)
        _rebuild_buffers(model)
        return model.eval()

    def component(self, name: str, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
        """One audio-side component alone (``temporal_encoder``, ``global_encoder``, ``fusion``, ``projector``)."""
        skeleton = model_skeleton(self.config)
        module = skeleton.audio_side_modules()[name]
        self.load_module(module, name + ".", dtype)
        _rebuild_buffers(module)
        return module

    def hash(self) -> str:
        """sha256 over config.json and the shards' bytes: identifies the source of a bundle."""
        h = hashlib.sha256()
        for f in [self.folder / "config.json", *sorted(set(self._where.values()))]:
            h.update(f.name.encode())
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 24), b""):
                    h.update(block)
        return h.hexdigest()


def _rebuild_buffers(module: torch.nn.Module) -> None:
    # Non-persistent buffers (rotary inv_freq) are not in the checkpoint; recompute them off the meta device.
    for sub in module.modules():
        if hasattr(sub, "inv_freq") and sub.inv_freq.is_meta:
            with torch.device("cpu"):
                fresh = type(sub)(sub.config)
            for name, buf in fresh.named_buffers(recurse=False):
                setattr(sub, name, buf)
            sub.attention_scaling = fresh.attention_scaling
        for name, buf in list(sub.named_buffers(recurse=False)):
            if buf.is_meta:
                raise CheckpointError(f"buffer {name} of {type(sub).__name__} was not restored")


def _listing(items: list[str], limit: int = 8) -> str:
    if not items:
        return "none"
    more = f" ... and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more
