"""``gamma-rt quantize gguf``: smaller decoder GGUFs through llama.cpp's own quantizer (``llama_model_quantize``).

No separate llama.cpp binary: llama-cpp-python exposes the quantizer, and this passes it the same parameters
``llama-quantize`` would, including an importance matrix (``--imatrix``, GGUF or legacy .dat format).

k-quants (Q4_K_M, Q5_K_M, Q6_K) pack rows in 256-wide super-blocks. A tensor whose rows are not a multiple
of 256 (every tensor of the 64-wide tiny preset) is quantized by llama.cpp with a fallback type instead
(Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0); the result loads and runs, but is not a k-quant.
"""

from __future__ import annotations

import ctypes
import os
import struct
from pathlib import Path

import numpy as np

from gamma_rt.errors import BundleError, GammaError
from gamma_rt.manifest import Component, Manifest

# --type -> llama_ftype value (llama.h)
FTYPES = {"Q8_0": 7, "Q4_0": 2, "Q6_K": 18, "Q5_K_M": 17, "Q4_K_M": 15, "Q5_0": 8, "Q4_K_S": 14, "Q3_K_M": 12}


def load_imatrix(path: str | Path) -> dict[str, np.ndarray]:
    """Per-tensor importance (mean squared activation per input column), as llama-quantize reads it.

    GGUF imatrix files (llama-imatrix's default) hold ``<tensor>.in_sum2`` sums and ``<tensor>.counts``;
    legacy ``.dat`` files hold per-tensor values and call counts. Both are turned into means.
    """
    path = Path(path)
    if not path.is_file():
        raise GammaError(f"{path}: imatrix file not found")
    with open(path, "rb") as f:
        magic = f.read(4)
    try:
        return _load_gguf_imatrix(path) if magic == b"GGUF" else _load_legacy_imatrix(path)
    except (struct.error, ValueError, UnicodeDecodeError) as e:
        raise GammaError(f"{path}: not a readable imatrix file ({e})") from None


def _load_gguf_imatrix(path: Path) -> dict[str, np.ndarray]:
    import gguf

    tensors = {t.name: np.asarray(t.data, dtype=np.float32) for t in gguf.GGUFReader(path).tensors}
    out = {}
    for name, sums in tensors.items():
        if not name.endswith(".in_sum2"):
            continue
        base = name[: -len(".in_sum2")]
        if base + ".counts" not in tensors:
            raise ValueError(f"{base}.in_sum2 without {base}.counts")
        counts = tensors[base + ".counts"].reshape(-1)
        rows = sums.reshape(len(counts), -1)  # one row per expert; dense models have one
        means = np.where(counts[:, None] > 0, rows / np.maximum(counts[:, None], 1), 1.0)
        out[base] = means.reshape(-1).astype(np.float32)
    if not out:
        raise ValueError("no <tensor>.in_sum2 entries")
    return out


def _load_legacy_imatrix(path: Path) -> dict[str, np.ndarray]:
    data = path.read_bytes()
    (n_entries,), at = struct.unpack_from("<i", data, 0), 4
    if not 0 < n_entries < 1_000_000:
        raise ValueError(f"{n_entries} entries")
    out = {}
    for _ in range(n_entries):
        (n,), at = struct.unpack_from("<i", data, at), at + 4
        name, at = data[at : at + n].decode(), at + n
        ncall, nval = struct.unpack_from("<ii", data, at)
        at += 8
        values = np.frombuffer(data, np.float32, nval, at).copy()
        at += 4 * nval
        out[name] = values / ncall if ncall > 0 else values
    return out


def quantize_file(src: str | Path, dst: str | Path, qtype: str, imatrix: dict[str, np.ndarray] | None = None,
                  n_threads: int | None = None) -> Path:
    """Quantize one GGUF into another with llama.cpp. ``qtype`` is a key of :data:`FTYPES`."""
    import llama_cpp

    from gamma_rt.runtime.decoder import quiet_llama_logs
    from gamma_rt.runtime.gguf_check import check_gguf

    quiet_llama_logs()
    src, dst = Path(src), Path(dst)
    check_gguf(src)  # llama.cpp would crash on a truncated input
    if qtype not in FTYPES:
        raise GammaError(f"--type {qtype}: choose one of {', '.join(FTYPES)}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = FTYPES[qtype]
    params.nthread = n_threads or os.cpu_count() or 1
    keep_alive = []
    if imatrix:
        entries = (llama_cpp.llama_model_imatrix_data * (len(imatrix) + 1))()  # NULL-terminated, as llama.h asks
        for i, (name, values) in enumerate(imatrix.items()):
            values = np.ascontiguousarray(values, dtype=np.float32)
            if not np.isfinite(values).all():
                raise GammaError(f"imatrix entry {name}: non-finite values")
            keep_alive.append(values)
            entries[i].name = name.encode()
            entries[i].data = values.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            entries[i].size = values.size
        params.imatrix = entries
        keep_alive.append(entries)
    tmp = dst.with_name(dst.name + ".tmp")
    try:
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), ctypes.byref(params))
        if rc != 0:
            raise GammaError(f"{src}: llama.cpp could not quantize to {qtype} (code {rc}; see its log)")
        os.replace(tmp, dst)
    finally:
        if tmp.exists():
            tmp.unlink()
    return dst


def quantize(target: str | Path, qtype: str, imatrix_path: str | Path | None = None, out: str | Path | None = None,
             n_threads: int | None = None, source_name: str | None = None) -> Path:
    """Quantize a bundle's F32/F16 decoder (recording ``decoder.<type>`` in its manifest) or a .gguf file.

    ``source_name`` picks the component to quantize; the base a LoRA adapter applies to (``decoder.base``,
    one with ``extra.base_id`` and nothing merged) becomes ``decoder.base.<type>``, which keeps its base_id,
    so ``--lora`` takes it."""
    target = Path(target)
    qtype = qtype.upper()
    imatrix = load_imatrix(imatrix_path) if imatrix_path else None
    if target.is_dir():
        manifest = Manifest.load(target)
        source = _named_source(manifest, target, source_name) if source_name else _best_source(manifest, target)
        stem = "decoder.base" if _is_adapter_base(source) else "decoder"
        name = f"{stem}.{qtype.lower()}"
        file = f"{stem.replace('.', '-')}-{qtype.lower()}.gguf"
        if out is not None and Path(out).resolve().parent != target.resolve():
            raise GammaError(f"--out {out}: a bundle's variant must be written inside the bundle {target}")
        quantize_file(target / source.file, target / file, qtype, imatrix, n_threads)
        extra = {**source.extra, "type": qtype.lower(), "quantized_from": source.file,
                 "imatrix": Path(imatrix_path).name if imatrix_path else None}
        manifest.add_file(target, name, Component(kind="gguf", file=file, sha256="", bytes=0,
                                                  precision=qtype.lower(), extra=extra))
        manifest.write(target)
        return target / file
    if target.suffix != ".gguf":
        raise GammaError(f"{target}: expected a bundle folder or a .gguf file")
    dst = Path(out) if out else target.with_name(f"{target.stem}-{qtype.lower()}.gguf")
    return quantize_file(target, dst, qtype, imatrix, n_threads)


def _is_adapter_base(component: Component) -> bool:
    """A decoder a kept-apart LoRA adapter applies to: it has a base_id and no adapter merged in."""
    return component.extra.get("base_id") is not None and component.extra.get("lora_merged") is None


def _named_source(manifest: Manifest, bundle: Path, name: str) -> Component:
    component = manifest.components.get(name)
    if component is None or component.kind != "gguf" or component.precision not in ("f32", "bf16", "f16"):
        known = ", ".join(k for k, c in manifest.components.items()
                          if c.kind == "gguf" and c.precision in ("f32", "bf16", "f16"))
        raise BundleError(f"{bundle / 'manifest.json'}: --source {name!r} is not an F32/F16/BF16 decoder of "
                          f"this bundle; it has {known or 'none'}")
    return component


def _best_source(manifest: Manifest, bundle: Path) -> Component:
    """The highest-precision decoder in the bundle: quantizing from F32 (or F16/BF16) loses least. The base
    of a kept-apart LoRA adapter is taken only with --source."""
    by_type = {c.precision: c for c in manifest.components.values() if c.kind == "gguf" and not _is_adapter_base(c)}
    for precision in ("f32", "bf16", "f16"):
        if precision in by_type:
            return by_type[precision]
    raise BundleError(
        f"{bundle / 'manifest.json'}: no f32/f16/bf16 decoder component to quantize from; "
        "run 'gamma-rt export gguf' first"
    )
