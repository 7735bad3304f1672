"""A cheap structural check of a GGUF file before llama.cpp sees it.

llama.cpp trusts its input: a truncated file can crash the process instead of failing to load. This walks
the header, the metadata and the tensor table in pure Python (no gguf package: the runtime install stays
small) and checks that every tensor's data lies inside the file. It reads the header only, never the weights.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from gamma_rt.errors import BundleError

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32

# GGUF metadata value types -> struct format of a scalar; 8 (string) and 9 (array) are handled apart.
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9

# GGML tensor type -> (elements per block, bytes per block), as in ggml.c's type_traits.
# Q8_1 (9) is left out: only ever an intermediate type, never stored in a file.
GGML_BLOCKS = {
    0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34),
    10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176), 14: (256, 210), 15: (256, 292),
    16: (256, 66), 17: (256, 74), 18: (256, 98), 19: (256, 50), 20: (32, 18), 21: (256, 110),
    22: (256, 82), 23: (256, 136), 24: (1, 1), 25: (1, 2), 26: (1, 4), 27: (1, 8), 28: (1, 8),
    29: (256, 56), 30: (1, 2), 34: (256, 54), 35: (256, 66), 39: (32, 17),
}


@dataclass
class GGUFHeader:
    version: int
    metadata: dict  # scalar and string values; arrays are recorded by their length only
    n_tensors: int
    data_bytes: int  # bytes the tensor data needs, from the data section's start


def check_gguf(path: str | Path) -> GGUFHeader:
    """Raise BundleError naming ``path`` unless it is a complete GGUF (v2/v3) file."""
    path = Path(path)
    if not path.is_file():
        raise BundleError(f"{path}: GGUF file not found")
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            return _walk(f, size)
    except (struct.error, UnicodeDecodeError, ValueError, OverflowError, MemoryError) as e:
        raise BundleError(f"{path}: not a valid GGUF file (corrupt header: {e})") from None
    except _Invalid as e:
        raise BundleError(f"{path}: not a valid GGUF file ({e})") from None


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
    metadata = {}
    for _ in range(n_kv):
        key = _string(f, size)
        metadata[key] = _value(f, struct.unpack("<I", _read(f, 4))[0], size)
    end = 0
    for _ in range(n_tensors):
        name = _string(f, size)
        (n_dims,) = struct.unpack("<I", _read(f, 4))
        if n_dims > 4:
            raise _Invalid(f"tensor {name!r} has {n_dims} dimensions")
        dims = struct.unpack(f"<{n_dims}Q", _read(f, 8 * n_dims))
        ggml_type, offset = struct.unpack("<IQ", _read(f, 12))
        n_elements = 1
        for d in dims:
            n_elements *= d
        block, type_size = GGML_BLOCKS.get(ggml_type, (1, 0))  # an unknown (newer) type: offsets only
        end = max(end, offset + n_elements // block * type_size)
    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0:
        raise _Invalid(f"general.alignment is {alignment!r}")
    data_start = -(-f.tell() // alignment) * alignment
    if data_start + end > size:
        raise _Invalid(
            f"truncated: tensor data needs {data_start + end} bytes, the file has {size}"
        )
    return GGUFHeader(version=version, metadata=metadata, n_tensors=n_tensors, data_bytes=end)


def _read(f, n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise _Invalid("truncated in the header")
    return data


def _string(f, size: int) -> str:
    (n,) = struct.unpack("<Q", _read(f, 8))
    if n > size:
        raise _Invalid(f"a {n}-byte string in a {size}-byte file")
    return _read(f, n).decode("utf-8")


def _value(f, kind: int, size: int):
    if kind in _SCALARS:
        fmt = "<" + _SCALARS[kind]
        return struct.unpack(fmt, _read(f, struct.calcsize(fmt)))[0]
    if kind == _STRING:
        return _string(f, size)
    if kind == _ARRAY:
        item_kind, n = struct.unpack("<IQ", _read(f, 12))
        if n > size:
            raise _Invalid(f"an array of {n} items in a {size}-byte file")
        if item_kind in _SCALARS:
            f.seek(n * struct.calcsize("<" + _SCALARS[item_kind]), 1)
        else:
            for _ in range(n):
                _value(f, item_kind, size)
        return f"[{n} items]"
    raise _Invalid(f"unknown metadata value type {kind}")
