"""Every field of ``manifest.json``, typed and bounded, in one table: a bundle is untrusted input.

:func:`parse_manifest` reads the text (its size bounded, values nested too deep cut out) and
:func:`check_fields` walks it against :data:`MANIFEST`, NaN and Infinity refused anywhere, so a hostile
value (NaN or 1e308 in a duration, n_mels 10^9, a string where an object belongs, a sha256 that is a
number) ends in one line naming the field path (``audio.window_seconds``), before any of it reaches
numpy, ONNX Runtime or llama.cpp.

The bounds are far above any real model's (Whisper large-v3: 128 mel bins, 30 s windows, 750 tokens) and
far below what would exhaust memory or overflow: they only refuse what no exporter writes. Cross-field
rules (frames per window, the chain's values) stay in :mod:`gamma_rt.manifest`. Pure Python + stdlib.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass

from gamma_rt.errors import BundleError

MAX_MANIFEST_BYTES = 16 * 2**20  # a real manifest is a few KB; a chat template is the largest field
MAX_DEPTH = 32  # JSON nesting anywhere in the file, recorded fields included
MAX_TEXT = 2**20  # characters of any one string
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _fail(where: str, path: str, what: str, value) -> BundleError:
    if value == _TOO_DEEP:
        return BundleError(f"{where}: field {path} is nested more than {MAX_DEPTH} deep")
    shown = repr(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return BundleError(f"{where}: field {path} must be {what}, got {shown}")


def _kind(value) -> str:
    return {dict: "an object", list: "a list", str: "text", bool: "true/false", type(None): "null"}.get(
        type(value), "a number")


# --- field types: each checks one value and names its path ------------------------------------------


@dataclass(frozen=True)
class Int:
    kinds = ("a number",)
    lo: int
    hi: int

    def check(self, value, path: str, where: str) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or not self.lo <= value <= self.hi:
            raise _fail(where, path, f"an integer in [{self.lo}, {self.hi}]", value)


@dataclass(frozen=True)
class Number:
    """A finite number in (lo, hi]: a duration, a rate."""

    kinds = ("a number",)
    lo: float
    hi: float

    def check(self, value, path: str, where: str) -> None:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not ok or not self.lo < value <= self.hi:
            raise _fail(where, path, f"a finite number in ({self.lo:g}, {self.hi:g}]", value)


@dataclass(frozen=True)
class Text:
    kinds = ("text",)
    lo: int = 0
    hi: int = MAX_TEXT
    name: bool = False  # a name: no control characters
    pattern: str = ""

    def check(self, value, path: str, where: str) -> None:
        if not isinstance(value, str) or not self.lo <= len(value) <= self.hi:
            raise _fail(where, path, f"text of {self.lo} to {self.hi} characters", value)
        if self.name and _CONTROL.search(value):
            raise _fail(where, path, "a name without control characters", value)
        if self.pattern and not re.fullmatch(self.pattern, value):
            raise _fail(where, path, f"text matching {self.pattern}", value)


@dataclass(frozen=True)
class OneOf:
    kinds = ("text",)
    values: tuple

    def check(self, value, path: str, where: str) -> None:
        if not isinstance(value, str) or value not in self.values:
            raise _fail(where, path, "one of " + ", ".join(self.values), value)


@dataclass(frozen=True)
class Bool:
    kinds = ("true/false",)
    def check(self, value, path: str, where: str) -> None:
        if not isinstance(value, bool):
            raise _fail(where, path, "true or false", value)


@dataclass(frozen=True)
class Nullable:
    inner: object

    def check(self, value, path: str, where: str) -> None:
        if value is not None:
            self.inner.check(value, path, where)


@dataclass(frozen=True)
class Either:
    """The option of ``options`` for the value's JSON kind (an integer or a name, text or an object)."""

    options: tuple

    def check(self, value, path: str, where: str) -> None:
        for option in self.options:
            if _kind(value) in option.kinds:
                option.check(value, path, where)
                return
        kinds = sorted({k for option in self.options for k in option.kinds})
        raise _fail(where, path, " or ".join(kinds), value)


@dataclass(frozen=True)
class ListOf:
    kinds = ("a list",)
    item: object
    hi: int
    lo: int = 0

    def check(self, value, path: str, where: str) -> None:
        if not isinstance(value, list) or not self.lo <= len(value) <= self.hi:
            raise _fail(where, path, f"a list of {self.lo} to {self.hi} items", value)
        for i, item in enumerate(value):
            self.item.check(item, f"{path}[{i}]", where)


@dataclass(frozen=True)
class MapOf:
    """An object with names of the caller's choosing (components, tools) and values of one type."""

    kinds = ("an object",)
    value: object
    hi: int
    lo: int = 0

    def check(self, value, path: str, where: str) -> None:
        if not isinstance(value, dict) or not self.lo <= len(value) <= self.hi:
            raise _fail(where, path, f"an object of {self.lo} to {self.hi} entries", value)
        for key, item in value.items():
            NAME.check(key, f"{path} key", where)
            self.value.check(item, f"{path}.{key}", where)


@dataclass(frozen=True)
class Obj:
    """An object with known fields. ``open``: other fields are kept (recorded, never read) but still
    bounded by the document-wide limits; otherwise they are refused."""

    kinds = ("an object",)
    fields: dict
    required: tuple = ()
    open: bool = True

    def check(self, value, path: str, where: str) -> None:
        if not isinstance(value, dict):
            raise _fail(where, path or "(top level)", "an object", value)
        for name in self.required:
            if name not in value:
                raise BundleError(f"{where}: field {_join(path, name)} missing")
        for name, item in value.items():
            spec = self.fields.get(name)
            if spec is not None:
                spec.check(item, _join(path, name), where)
            elif not self.open:
                raise BundleError(f"{where}: unknown field {_join(path, name)}")


@dataclass(frozen=True)
class AnyJSON:
    """Any JSON value (its size and depth are bounded for the whole document)."""

    def check(self, value, path: str, where: str) -> None:
        pass


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


# --- the manifest -------------------------------------------------------------------------------------

NAME = Text(1, 256, name=True)
SHA256 = Text(64, 64, pattern="[0-9a-f]{64}")
BYTES = Int(0, 2**50)
DTYPES = ("float32", "float16", "bfloat16", "int64", "int32", "int8", "uint8", "bool")
SHORT = Text(0, 4096)

TENSOR = Obj({"name": NAME, "shape": ListOf(Either((Int(0, 2**31), NAME)), 8),
              "dtype": OneOf(DTYPES)}, required=("name", "shape", "dtype"), open=False)
COMPONENT = Obj({
    "kind": OneOf(("onnx", "gguf", "gguf_lora", "engine")),  # gguf_lora: a LoRA adapter of a gguf decoder
    "file": Text(1, 4096),
    "sha256": SHA256,
    "bytes": BYTES,
    "precision": NAME,
    "inputs": ListOf(TENSOR, 64),
    "outputs": ListOf(TENSOR, 64),
    "opset": Nullable(Int(1, 1000)),
    "external_data": ListOf(Text(1, 4096), 100_000),
    "extra": Obj({"n_embd": Int(1, 2**20), "n_vocab": Int(1, 2**24),
                  "external_data_sha256": MapOf(SHA256, 100_000), "external_data_bytes": MapOf(BYTES, 100_000)}),
}, required=("kind", "file", "sha256", "bytes", "precision"), open=False)
CHAIN_STEP = Obj({"component": NAME, "inputs": MapOf(NAME, 64, 1), "outputs": MapOf(NAME, 64, 1)},
                 required=("component", "inputs", "outputs"), open=False)
AUDIO = Obj({
    "sample_rate": Int(1000, 384_000),
    "n_fft": Int(16, 16_384),
    "hop_length": Int(1, 16_384),
    "n_mels": Int(1, 1024),
    "window_seconds": Number(0.01, 600),
    "window_frames": Int(1, 1_000_000),
    "tokens_per_window": Int(1, 100_000),
    "max_seconds": Nullable(Number(0, 7 * 86_400)),
    "token_count": AnyJSON(),  # a rule of gamma_rt/token_count.py, which checks its name and parameters
    "front_end": Text(1, 64, name=True),
    "front_end_options": Obj({"mean": Number(-1e6, 1e6), "std": Number(0, 1e6)}),
    "chain": ListOf(CHAIN_STEP, 64, 1),
    # recorded by the exporters, read by the engine plan
    "window_samples": Int(1, 2**24),
    "encoder_tokens_per_window": Int(1, 1_000_000),
    "pool_stride": Int(1, 1024),
}, required=("sample_rate", "n_mels", "window_frames", "tokens_per_window"))
PROMPT = Obj({
    "user_template": Text(0, 65_536),
    "audio_start": Text(0, 1024),
    "audio_end": Text(0, 1024),
    "audio_token": Text(0, 1024),
    "time_marker": Text(0, 256),
    "system": Text(0, 65_536),
    "stop": ListOf(Text(1, 256), 32),
    "chat_template": Text(0, 262_144),
    "audio_placeholder": Text(0, 1024),
    "template_vars": MapOf(Nullable(Either((Text(0, 65_536), Int(-2**63, 2**63), Bool()))), 64),
})
LLM = Obj({"n_embd": Int(0, 2**20), "n_vocab": Int(0, 2**24), "n_layer": Int(0, 4096), "arch": NAME})
ENGINE_COMPONENT = Obj({"file": Text(1, 4096), "sha256": SHA256, "bytes": BYTES, "source": NAME,
                        "source_sha256": SHA256, "precision": NAME, "cache_key": SHORT})
ENGINE = Obj({"gpu": SHORT, "compute_capability": Text(1, 16), "trt_version": Text(1, 64),
              "timing_cache": Text(0, 4096), "components": MapOf(ENGINE_COMPONENT, 256),
              "version_compatible": Bool(), "lean_runtime_included": Bool()})
MANIFEST = Obj({
    "schema_version": Int(1, 2**31),  # newer than this gamma-rt reads: refused by the manifest, with advice
    "created_by": SHORT,
    "source": Obj({"checkpoint_sha256": Text(0, 128), "preset": SHORT, "family": NAME}),
    "tools": MapOf(SHORT, 256),
    "audio": AUDIO,
    "prompt": PROMPT,
    "llm": LLM,
    "components": MapOf(COMPONENT, 1024),
    "engines": MapOf(ENGINE, 256),
}, required=("schema_version", "audio", "prompt", "components"), open=False)


# --- reading ------------------------------------------------------------------------------------------


def read_manifest(path) -> dict:
    """:func:`parse_manifest` of the file at ``path``, read up to one byte past the size limit."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_MANIFEST_BYTES + 1)
    except OSError as e:
        raise BundleError(f"{path}: cannot read ({e.strerror})") from None
    return parse_manifest(raw, str(path))


def parse_manifest(raw: bytes, where: str) -> dict:
    """The manifest's JSON, or a one-line BundleError: too large, not UTF-8 JSON. A value nested past
    MAX_DEPTH, an integer of more than 30 digits, NaN and Infinity (which JSON does not have and Python's
    reader accepts) are parsed as markers that :func:`check_fields` refuses, naming their field."""
    if len(raw) > MAX_MANIFEST_BYTES:
        raise BundleError(f"{where}: larger than {MAX_MANIFEST_BYTES} bytes, which no manifest is")
    try:
        text = _cut_deep(raw.decode("utf-8"))
        # Python refuses to convert integers past 4,300 digits, with a message naming no field
        return json.loads(text, parse_int=lambda s: int(s) if len(s) <= 30 else math.inf)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:  # JSONDecodeError, bad UTF-8
        raise BundleError(f"{where}: not valid JSON ({str(e)[:120]})") from None


_TOO_DEEP = "\x00nested too deep\x00"
_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')


def _cut_deep(text: str) -> str:
    """``text`` with every value nested past MAX_DEPTH replaced by the string _TOO_DEEP, so that the
    reader does not recurse into it and the field check names where it was."""
    out, depth, keep, cut_at = [], 0, 0, None
    for m in _TOKENS.finditer(text):
        token = m.group()
        if token[0] == '"':
            continue
        if token in "[{":
            depth += 1
            if depth == MAX_DEPTH + 1 and cut_at is None:
                cut_at = m.start()
        else:
            depth -= 1
            if depth == MAX_DEPTH and cut_at is not None:
                out += [text[keep:cut_at], json.dumps(_TOO_DEEP)]
                keep, cut_at = m.end(), None
    return "".join(out) + text[keep:] if out else text


def _check_document(value, path: str, where: str, depth: int) -> None:
    """Limits on the whole document, recorded fields included: depth, text length, finite numbers."""
    if depth > MAX_DEPTH:
        raise BundleError(f"{where}: field {path} is nested more than {MAX_DEPTH} deep")
    if isinstance(value, dict):
        for key, item in value.items():
            if len(key) > 256:
                raise BundleError(f"{where}: a field name under {path or '(top level)'} is {len(key)} characters")
            _check_document(item, _join(path, key), where, depth + 1)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_document(item, f"{path}[{i}]", where, depth + 1)
    elif value == _TOO_DEEP:
        raise BundleError(f"{where}: field {path} is nested more than {MAX_DEPTH} deep")
    elif isinstance(value, str) and len(value) > MAX_TEXT:
        raise BundleError(f"{where}: field {path} is {len(value)} characters, more than {MAX_TEXT}")
    elif isinstance(value, float) and not math.isfinite(value):
        raise BundleError(f"{where}: field {path} must be a finite number, got {value!r}")


def check_fields(data, where: str) -> None:
    """``data`` (a parsed manifest) against :data:`MANIFEST`, then the limits on every value, recorded
    ones included (depth, text length, finite numbers): the first bad field, as one BundleError line."""
    MANIFEST.check(data, "", where)
    _check_document(data, "", where, 0)


def check_section(spec: Obj, data, path: str, where: str) -> None:
    """One section (``AUDIO``, ``LLM``) as an exporter or a test builds it in memory, where a field left out
    takes its default (a manifest read from disk went through :func:`check_fields` whole)."""
    dataclasses.replace(spec, required=()).check(data, path, where)
    _check_document(data, path, where, 1)
