"""A cheap check of a GGUF file before llama.cpp sees it: structure, tensor table, hyperparameters, vocabulary.

llama.cpp trusts its input: a truncated file, a layer count of 0, a NaN epsilon, an alignment of 1 or a
token listed twice abort the whole process (GGML_ASSERT, SIGABRT) instead of failing to load. This walks the
header, the metadata and the tensor table in pure Python (no gguf package: the runtime install stays small),
without recursion, and checks that every tensor's data lies inside the file, in a type this llama.cpp reads;
runtime/gguf_hparams.py then checks what the architecture's loader asserts. It reads the header only, never
the weights.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

from gamma_rt.errors import BundleError

from .gguf_hparams import Unusable, check_hparams

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
# ggml asserts that every tensor's data sits on a 32-byte boundary (TENSOR_ALIGNMENT); with
# general.alignment 1 the data section can start anywhere.
TENSOR_ALIGNMENT = 32
MAX_DIMS = 4  # GGML_MAX_DIMS
TOKENS_KEY = "tokenizer.ggml.tokens"
HEADER_BUFFER = 1 << 20  # bytes read at a time: a 150k-token vocabulary is a few MB of small strings

# GGUF metadata value types -> struct format of a scalar; 8 (string) and 9 (array) are handled apart.
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY, _UINT32 = 8, 9, 4

# GGML tensor type -> (elements per block, bytes per block), as in ggml.c's type_traits: the types this
# llama.cpp reads from a file. Q8_1 (9) is left out: only ever an intermediate type, never stored.
GGML_BLOCKS = {
    0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34),
    10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176), 14: (256, 210), 15: (256, 292),
    16: (256, 66), 17: (256, 74), 18: (256, 98), 19: (256, 50), 20: (32, 18), 21: (256, 110),
    22: (256, 82), 23: (256, 136), 24: (1, 1), 25: (1, 2), 26: (1, 4), 27: (1, 8), 28: (1, 8),
    29: (256, 56), 30: (1, 2), 34: (256, 54), 35: (256, 66), 39: (32, 17),
}


@dataclass(frozen=True)
class GGUFTensor:
    name: str
    dims: tuple[int, ...]  # ggml order: dims[0] is the row length (n_embd of token_embd.weight)
    ggml_type: int
    offset: int  # from the data section's start


@dataclass
class GGUFHeader:
    version: int
    metadata: dict  # scalar and string values; arrays are recorded by their length only, as "[N items]"
    n_tensors: int
    data_bytes: int  # bytes the tensor data needs, from the data section's start
    kinds: dict = field(default_factory=dict)  # key -> GGUF value type
    arrays: dict = field(default_factory=dict)  # key -> (item value type, item count)
    tensors: list = field(default_factory=list)  # GGUFTensor, in file order


def check_gguf(path: str | Path, adapter: bool = False) -> GGUFHeader:
    """Raise BundleError naming ``path`` unless it is a complete GGUF (v2/v3) file llama.cpp can load: a
    decoder, or with ``adapter`` a LoRA adapter (general.type "adapter", adapter.type "lora")."""
    path = Path(path)
    if not path.is_file():
        raise BundleError(f"{path}: GGUF file not found")
    size = path.stat().st_size
    try:
        with open(path, "rb", buffering=HEADER_BUFFER) as f:
            header = _walk(f, size)
    except (struct.error, UnicodeDecodeError, ValueError, OverflowError, MemoryError) as e:
        raise BundleError(f"{path}: not a valid GGUF file (corrupt header: {e})") from None
    except _Invalid as e:
        raise BundleError(f"{path}: not a valid GGUF file ({e})") from None
    if adapter:
        kinds = (header.metadata.get("general.type"), header.metadata.get("adapter.type"))
        if kinds != ("adapter", "lora"):
            raise BundleError(f"{path}: general.type / adapter.type are {kinds[0]!r} / {kinds[1]!r}; "
                              "not a GGUF LoRA adapter")
        return header
    try:
        check_hparams(header)
    except Unusable as e:
        raise BundleError(f"{path}: unusable GGUF decoder ({e})") from None
    return header


class _Invalid(Exception):
    pass


def _walk(f, size: int) -> GGUFHeader:
    magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise _Invalid(f"starts with {magic!r}, expected {GGUF_MAGIC!r}")
    version, n_tensors, n_kv = struct.unpack("<IQQ", _read(f, 20))
    if version not in (2, 3):
        raise _Invalid(f"GGUF version {version}; llama.cpp reads 2 and 3")
    if n_tensors > size or n_kv > size:
        raise _Invalid(f"header claims {n_tensors} tensors and {n_kv} metadata keys in a {size}-byte file")
    header = GGUFHeader(version=version, metadata={}, n_tensors=n_tensors, data_bytes=0)
    for _ in range(n_kv):
        key = _string(f, size)
        if key in header.kinds:
            raise _Invalid(f"metadata key {key} appears twice")
        (kind,) = struct.unpack("<I", _read(f, 4))
        header.kinds[key] = kind
        if kind == _ARRAY:
            header.arrays[key] = _array(f, key, size)
            header.metadata[key] = f"[{header.arrays[key][1]} items]"
        else:
            header.metadata[key] = _scalar(f, key, kind, size)
    alignment = _alignment(header)
    names = set()
    for _ in range(n_tensors):
        tensor = _tensor(f, size)
        if tensor.name in names:
            raise _Invalid(f"tensor {tensor.name!r} appears twice")
        names.add(tensor.name)
        if tensor.offset % max(alignment, TENSOR_ALIGNMENT):
            raise _Invalid(f"tensor {tensor.name!r} starts at offset {tensor.offset}, not a multiple of "
                           f"{max(alignment, TENSOR_ALIGNMENT)} (general.alignment {alignment}; ggml needs 32)")
        header.tensors.append(tensor)
        header.data_bytes = max(header.data_bytes, tensor.offset + tensor_bytes(tensor))
    data_start = -(-f.tell() // alignment) * alignment
    if data_start % TENSOR_ALIGNMENT:
        raise _Invalid(f"tensor data starts at byte {data_start}, off the 32-byte boundary ggml needs "
                       f"(general.alignment is {alignment})")
    if data_start + header.data_bytes > size:
        raise _Invalid(f"truncated: tensor data needs {data_start + header.data_bytes} bytes, the file has {size}")
    return header


def _alignment(header: GGUFHeader) -> int:
    if "general.alignment" not in header.kinds:
        return DEFAULT_ALIGNMENT
    value = header.metadata["general.alignment"]
    if header.kinds["general.alignment"] != _UINT32:
        raise _Invalid(f"general.alignment is stored as value type {header.kinds['general.alignment']}, "
                       "llama.cpp reads only uint32 (4)")
    if value <= 0 or value & (value - 1):
        raise _Invalid(f"general.alignment is {value}; it must be a power of two")
    return value


def _tensor(f, size: int) -> GGUFTensor:
    name = _string(f, size)
    (n_dims,) = struct.unpack("<I", _read(f, 4))
    if not 1 <= n_dims <= MAX_DIMS:
        raise _Invalid(f"tensor {name!r} has {n_dims} dimensions (llama.cpp reads 1 to {MAX_DIMS})")
    dims = struct.unpack(f"<{n_dims}Q", _read(f, 8 * n_dims))
    ggml_type, offset = struct.unpack("<IQ", _read(f, 12))
    if ggml_type not in GGML_BLOCKS:
        raise _Invalid(f"tensor {name!r} has ggml type {ggml_type}, which this llama.cpp does not read")
    block = GGML_BLOCKS[ggml_type][0]
    if any(d == 0 for d in dims) or dims[0] % block:
        raise _Invalid(f"tensor {name!r} has shape {list(dims)}: rows must be whole blocks of {block} "
                       f"(ggml type {ggml_type}) and no dimension 0")
    return GGUFTensor(name, tuple(dims), ggml_type, offset)


def tensor_bytes(t: GGUFTensor) -> int:
    """Bytes of ``t``'s data: whole blocks of its ggml type."""
    block, type_size = GGML_BLOCKS[t.ggml_type]
    n = 1
    for d in t.dims:
        n *= d
    return n // block * type_size


def _read(f, n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise _Invalid("truncated in the header")
    return data


def _raw_string(f, size: int) -> bytes:
    (n,) = struct.unpack("<Q", _read(f, 8))
    if n > size:
        raise _Invalid(f"a {n}-byte string in a {size}-byte file")
    return _read(f, n)


def _string(f, size: int) -> str:
    return _raw_string(f, size).decode("utf-8")


def _scalar(f, key: str, kind: int, size: int):
    if kind in _SCALARS:
        fmt = "<" + _SCALARS[kind]
        return struct.unpack(fmt, _read(f, struct.calcsize(fmt)))[0]
    if kind == _STRING:
        return _string(f, size)
    raise _Invalid(f"metadata key {key} has unknown value type {kind}")


def _array(f, key: str, size: int) -> tuple[int, int]:
    """Skip one array's items (a vocabulary is also checked for repeats); (item type, count)."""
    item_kind, n = struct.unpack("<IQ", _read(f, 12))
    if n > size:
        raise _Invalid(f"metadata key {key}: an array of {n} items in a {size}-byte file")
    if item_kind == _ARRAY:
        raise _Invalid(f"metadata key {key} holds arrays of arrays, which llama.cpp does not read")
    if item_kind in _SCALARS:
        f.seek(n * struct.calcsize("<" + _SCALARS[item_kind]), 1)
    elif item_kind == _STRING:
        seen: set[bytes] | None = set() if key == TOKENS_KEY else None
        for _ in range(n):
            item = _raw_string(f, size)
            if seen is not None:
                if item in seen:
                    raise _Invalid(f"{key} lists the token {item[:40]!r} twice (llama.cpp needs every token once)")
                seen.add(item)
    else:
        raise _Invalid(f"metadata key {key}: array of unknown value type {item_kind}")
    return item_kind, n
