"""Reading a Hugging Face model folder: config.json, safetensors (sharded or single), tokenizer, processor,
chat template and generation config. Every field gamma-rt cannot honour is an error naming it.

Nothing here loads a whole model: weights are located by key (one safetensors header at a time) and read
tensor by tensor by the exporters.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from gamma_rt.decoder_shape import DecoderShape
from gamma_rt.errors import CheckpointError

CONFIG = "config.json"
INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"


def read_json(path: Path, required: bool = True) -> dict | None:
    if not path.is_file():
        if required:
            raise CheckpointError(f"{path}: missing")
        return None
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


# --- the decoder's hyperparameters ----------------------------------------------------------------


def rope_theta(cfg: dict, where: str) -> float:
    """RoPE base from either layout: transformers 5 ``rope_parameters`` or transformers 4 ``rope_theta`` /
    ``rope_scaling``. Any scaling other than plain RoPE is refused, naming the field."""
    params = cfg.get("rope_parameters")
    scaling = cfg.get("rope_scaling")
    for field_name, block in (("rope_parameters", params), ("rope_scaling", scaling)):
        if block is None:
            continue
        if not isinstance(block, dict):
            raise CheckpointError(f"{where}: field {field_name} is {block!r}; expected an object")
        kind = block.get("rope_type", block.get("type", "default"))
        if kind != "default":
            raise CheckpointError(
                f"{where}: field {field_name}.rope_type is {kind!r}; gamma-rt converts plain RoPE ('default') only"
            )
        factor = block.get("partial_rotary_factor", 1.0)
        if factor != 1.0:
            raise CheckpointError(f"{where}: field {field_name}.partial_rotary_factor {factor} is not supported")
    if isinstance(params, dict) and "rope_theta" in params:
        return float(params["rope_theta"])
    if "rope_theta" in cfg:
        return float(cfg["rope_theta"])
    raise CheckpointError(f"{where}: neither rope_parameters.rope_theta nor rope_theta is set")


def decoder_shape(cfg: dict, where: str, arch: str) -> DecoderShape:
    """The decoder of a Qwen2 (``arch`` "qwen2") or Qwen3 text config; unsupported fields are errors."""
    if cfg.get("use_sliding_window") or "sliding_attention" in (cfg.get("layer_types") or []):
        raise CheckpointError(
            f"{where}: fields use_sliding_window/layer_types ask for sliding-window attention on some layers; "
            "gamma-rt converts full attention only"
        )
    if cfg.get("hidden_act", "silu") != "silu":
        raise CheckpointError(f"{where}: field hidden_act is {cfg['hidden_act']!r}; Qwen decoders use 'silu'")
    if arch == "qwen3" and cfg.get("attention_bias"):
        raise CheckpointError(f"{where}: field attention_bias is true; llama.cpp's qwen3 has no attention biases")
    needed = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
    missing = [k for k in needed if k not in cfg]
    if missing:
        raise CheckpointError(f"{where}: field(s) {', '.join(missing)} missing")
    heads = cfg["num_attention_heads"]
    return DecoderShape(
        vocab_size=cfg["vocab_size"],
        hidden_size=cfg["hidden_size"],
        intermediate_size=cfg["intermediate_size"],
        num_hidden_layers=cfg["num_hidden_layers"],
        num_attention_heads=heads,
        num_key_value_heads=cfg.get("num_key_value_heads") or heads,
        head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
        rope_theta=rope_theta(cfg, where),
        rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        max_position_embeddings=int(cfg.get("max_position_embeddings", 32768)),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
    )


# --- weights -----------------------------------------------------------------------------------------


class Weights:
    """Where each tensor of a folder lives: ``model.safetensors.index.json`` names the shards, else every
    ``*.safetensors`` file is read. A shard the index names but the folder lacks is an error."""

    def __init__(self, folder: Path):
        from safetensors import safe_open

        self.folder = folder
        index = read_json(folder / INDEX, required=False)
        if index is not None:
            weight_map = index.get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise CheckpointError(f"{folder / INDEX}: field weight_map missing or empty")
            files = sorted({folder / name for name in weight_map.values()})
            absent = [f.name for f in files if not f.is_file()]
            if absent:
                raise CheckpointError(f"{folder / INDEX}: names shard(s) {', '.join(absent)}, missing from {folder}")
        else:
            files = sorted(folder.glob("*.safetensors"))
            if not files:
                raise CheckpointError(f"{folder}: no *.safetensors weight files")
        self.files = files
        self.where: dict[str, Path] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        for f in files:
            try:
                with safe_open(f, "pt") as sf:
                    for key in sf.keys():
                        self.where[key] = f
                        self.shapes[key] = tuple(sf.get_slice(key).get_shape())
            except Exception as e:  # safetensors raises its own error types for corrupt headers
                raise CheckpointError(f"{f}: not a readable safetensors file ({e})") from None

    def tensor(self, key: str):
        """One tensor, as stored (torch)."""
        from safetensors import safe_open

        if key not in self.where:
            raise CheckpointError(f"{self.folder}: missing tensor {key}")
        with safe_open(self.where[key], "pt") as sf:
            return sf.get_tensor(key)

    def hash(self) -> str:
        """sha256 over config.json and every weight file: the bundle's source id."""
        h = hashlib.sha256()
        for f in [self.folder / CONFIG, *self.files]:
            h.update(f.name.encode())
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 24), b""):
                    h.update(block)
        return h.hexdigest()


def map_key(key: str, table: dict[str, str]) -> str | None:
    """``key`` renamed by a key-map table (prefix -> replacement prefix; the longest prefix wins), None when
    no prefix matches."""
    for src in sorted(table, key=len, reverse=True):
        if key.startswith(src):
            return table[src] + key[len(src):]
    return None


def strip_prefixes(keys, table: dict[str, str]) -> dict[str, str]:
    """{our name: stored key} for stored keys under a prefix of ``table`` (stored prefix -> our prefix).

    Longest prefix wins; keys under no prefix are left out.
    """
    return {ours: key for key in keys if (ours := map_key(key, table)) is not None}


# --- tokenizer, template, processor, generation -------------------------------------------------------


def tokenizer_files(folder: Path) -> tuple[dict, dict]:
    """(tokenizer.json, tokenizer_config.json) of the folder; both are required."""
    tok = read_json(folder / "tokenizer.json", required=False)
    if tok is None:
        raise CheckpointError(f"{folder / 'tokenizer.json'}: missing; the GGUF and the prompt need the tokenizer")
    cfg = read_json(folder / "tokenizer_config.json", required=False)
    if cfg is None:
        raise CheckpointError(f"{folder / 'tokenizer_config.json'}: missing; it names the eos and pad tokens")
    return tok, cfg


def token_ids(tokenizer_json: dict) -> dict[str, int]:
    """Every token text -> id, added tokens included."""
    ids = dict(tokenizer_json.get("model", {}).get("vocab", {}))
    ids.update({t["content"]: t["id"] for t in tokenizer_json.get("added_tokens", [])})
    return ids


def token_text(value) -> str | None:
    """A special-token entry of tokenizer_config.json: a string or an AddedToken dict."""
    return value.get("content") if isinstance(value, dict) else value


def chat_template(folder: Path) -> str | None:
    """The folder's own chat template: chat_template.jinja, else processor_config.json,
    chat_template.json or tokenizer_config.json (first found)."""
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text()
    for name in ("processor_config.json", "chat_template.json", "tokenizer_config.json"):
        data = read_json(folder / name, required=False) or {}
        template = data.get("chat_template")
        if isinstance(template, list):  # named templates: the default one
            template = next((t["template"] for t in template if t.get("name") == "default"), None)
        if isinstance(template, str):
            return template
    return None


def feature_extractor(folder: Path) -> tuple[dict, dict, Path]:
    """(feature extractor fields, processor fields, file read): processor_config.json (transformers 5 nests
    the feature extractor in it) or preprocessor_config.json."""
    proc_path, pre_path = folder / "processor_config.json", folder / "preprocessor_config.json"
    proc = read_json(proc_path, required=False)
    pre = read_json(pre_path, required=False)
    if proc is None and pre is None:
        raise CheckpointError(
            f"{proc_path}: missing (and no preprocessor_config.json); the audio front end is read from it"
        )
    proc = proc or {}
    fe = proc.get("feature_extractor") or pre
    if not isinstance(fe, dict):
        raise CheckpointError(f"{proc_path}: field feature_extractor missing (and no preprocessor_config.json)")
    return fe, proc, (proc_path if "feature_extractor" in proc else pre_path)


def eos_strings(folder: Path, tokenizer_json: dict, tokenizer_config: dict) -> list[str]:
    """Stop strings: generation_config.json's eos_token_id(s), then tokenizer_config.json's eos_token."""
    by_id = {i: t for t, i in token_ids(tokenizer_json).items()}
    gen = read_json(folder / "generation_config.json", required=False) or {}
    ids = gen.get("eos_token_id")
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    out = []
    for i in ids:
        if i not in by_id:
            raise CheckpointError(f"{folder / 'generation_config.json'}: eos_token_id {i} is not in tokenizer.json")
        out.append(by_id[i])
    eos = token_text(tokenizer_config.get("eos_token"))
    if eos:
        out.append(eos)
    if not out:
        raise CheckpointError(f"{folder / 'tokenizer_config.json'}: field eos_token missing")
    return list(dict.fromkeys(out))
