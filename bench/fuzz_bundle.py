"""The fuzz run's bundle areas: mutated GGUF, manifest and ONNX files, each then asked about a song.

A case's bundle is the pristine one hard-linked file by file, except the one file it mutates, and the
manifest records the mutated file's sha256 and size: a bundle made hostile on purpose, not one damaged in
transit, which the hash check alone would refuse.
"""

from __future__ import annotations

import json
import math
import os
import struct
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

from gamma_rt.hashing import sha256_file

from .fuzz import last_line, CaseResult, FuzzContext, TAIL_CHARS, FAILING, run_command

# Values a number field is set to, by its struct format: the edges llama.cpp and the manifest reader meet.
SPECIAL = {
    "I": (0, 1, 3, 2**31, 2**32 - 1, 10**6),
    "i": (-1, 0, 2**31 - 1, -(2**31)),
    "Q": (0, 1, 2**32, 2**63, 2**64 - 1),
    "q": (-1, 0, 2**63 - 1),
    "H": (0, 2**16 - 1), "h": (-1, 0), "B": (0, 2, 255), "b": (-1, 0), "?": (2, 255),
    "f": (math.nan, -1.0, 0.0, math.inf, -math.inf, 1e38, 1e-45),
    "d": (math.nan, math.inf, -1.0, 1e308),
}
_GGUF_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


def bundle_case(ctx: FuzzContext, area: str, name: str, write: Callable[[Path], str | None]) -> CaseResult:
    """Copy the bundle (hard links), let ``write(bundle)`` mutate one file (it returns the component whose
    sha256 and bytes to re-record, or None), then run ``gamma-rt ask`` on it."""
    bundle = ctx.scratch(area) / "bundle"
    bundle.mkdir()
    for f in ctx.bundle.iterdir():
        if f.is_file():
            os.link(f, bundle / f.name)
    component = write(bundle)
    if component is not None:
        rerecord(bundle, component)
    t0 = time.monotonic()
    outcome, rc, text = run_command(ctx.ask(bundle), ctx.timeout, env=ctx.env())
    seconds = time.monotonic() - t0
    return CaseResult(area, name, outcome, round(seconds, 2), rc, text[-TAIL_CHARS:] if outcome in FAILING else last_line(text))


def rerecord(bundle: Path, component: str) -> None:
    """The manifest's sha256 and bytes of ``component``, taken from its (mutated) file."""
    path = bundle / "manifest.json"
    m = json.loads(path.read_text())
    c = m["components"][component]
    c["sha256"], c["bytes"] = sha256_file(bundle / c["file"]), (bundle / c["file"]).stat().st_size
    replace_file(path, json.dumps(m, indent=2).encode())


def replace_file(path: Path, data: bytes) -> None:
    """Write ``data`` as a new file at ``path``, never through the hard link to the pristine bundle."""
    path.unlink(missing_ok=True)
    path.write_bytes(data)


def component_of_kind(bundle: Path, kind: str) -> list[str]:
    m = json.loads((bundle / "manifest.json").read_text())
    return sorted(n for n, c in m["components"].items() if c.get("kind") == kind)


# --- gguf -----------------------------------------------------------------------------------------


class GGUFLayout:
    """Where each header field of a pristine GGUF lies: ``slots`` (label, offset, struct format) of every
    number a mutation may overwrite, plus the spans a re-layout needs."""

    def __init__(self, path: Path):
        from gguf import GGUFReader

        reader = GGUFReader(path)
        self.data = path.read_bytes()
        self.slots = [("header.version", 4, "I"), ("header.n_tensors", 8, "Q"), ("header.n_kv", 16, "Q")]
        self.strings: list[tuple[str, int, int]] = []  # (label, offset of the length, length)
        self.tokens: list[tuple[int, int]] = []  # (offset of the bytes, length) of each token string
        for f in reader.fields.values():
            if not f.name.startswith("GGUF."):
                self._field(f)
        self.kv_end = reader.tensors[0].field.offset
        last = reader.tensors[-1].field
        self.infos_end = last.offset + sum(p.nbytes for p in last.parts)
        self.data_start = reader.data_offset
        self.tensor_names = {t.name for t in reader.tensors}
        for t in reader.tensors:
            offs = self._offsets(t.field)
            n_dims = int(t.field.parts[2][0])
            self.slots += [(f"{t.name}.n_dims", offs[2], "I"), (f"{t.name}.type", offs[4], "I"),
                           (f"{t.name}.offset", offs[5], "Q")]
            self.slots += [(f"{t.name}.dim{i}", offs[3] + 8 * i, "Q") for i in range(n_dims)]

    @staticmethod
    def _offsets(f) -> list[int]:
        out, off = [], f.offset
        for p in f.parts:
            out.append(off)
            off += p.nbytes
        return out

    def _field(self, f) -> None:
        offs = self._offsets(f)
        kind = int(f.types[0])
        self.slots.append((f"{f.name}.type", offs[2], "I"))
        if kind in _GGUF_SCALARS:
            self.slots.append((f.name, offs[3], _GGUF_SCALARS[kind]))
        elif kind == 8:
            self.strings.append((f.name, offs[3], int(f.parts[3][0])))
        elif kind == 9:
            self.slots += [(f"{f.name}.item_type", offs[3], "I"), (f"{f.name}.count", offs[4], "Q")]
            if f.name == "tokenizer.ggml.tokens":
                self.tokens = [(offs[i + 1], int(f.parts[i][0])) for i in range(5, len(f.parts), 2)]
            elif len(f.types) > 1 and int(f.types[1]) == 8 and len(f.parts) > 5:
                self.strings.append((f"{f.name}[0]", offs[5], int(f.parts[5][0])))

    def insert_kv(self, blob: bytes, alignment: int = 32) -> bytes:
        """The file with one more metadata entry ``blob`` (key, type, value) after the others, the tensor
        data moved to the next multiple of ``alignment`` (offsets inside the data section unchanged)."""
        (n_kv,) = struct.unpack_from("<Q", self.data, 16)
        head = bytearray(self.data[:self.kv_end])
        struct.pack_into("<Q", head, 16, n_kv + 1)
        body = bytes(head) + blob + self.data[self.kv_end:self.infos_end]
        return body + b"\0" * (-len(body) % alignment) + self.data[self.data_start:]


def gguf_string(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw)) + raw


def gguf_mutations(layout: GGUFLayout, rng, source: Path) -> tuple[str, bytes]:
    """One mutation of the GGUF: (what was done, the new file's bytes)."""
    data = bytearray(layout.data)
    kind = rng.choice(["metadata", "metadata", "metadata", "tensor", "header", "string", "flip", "truncate",
                       "token", "insert", "retype"])
    if kind in ("metadata", "tensor", "header"):
        slots = [s for s in layout.slots if _slot_kind(s[0], layout) == kind]
        label, off, fmt = rng.choice(slots)
        value = rng.choice(SPECIAL[fmt])
        struct.pack_into("<" + fmt, data, off, value)
        return f"{label} = {value!r}", bytes(data)
    if kind == "string":
        label, off, n = rng.choice(layout.strings)
        value = rng.choice((0, n + 1, n - 1, 2**63, 2**64 - 1))
        struct.pack_into("<Q", data, off, value)
        return f"{label} string length {n} -> {value}", bytes(data)
    if kind == "flip":
        spots = sorted(rng.randrange(4, layout.infos_end) for _ in range(rng.randint(1, 8)))
        for s in spots:
            data[s] ^= 1 << rng.randrange(8)
        return f"bits flipped at header bytes {spots}", bytes(data)
    if kind == "truncate":
        cut = rng.choice((rng.randrange(layout.infos_end), rng.randrange(layout.infos_end, len(data))))
        return f"truncated to {cut} of {len(data)} bytes", bytes(data[:cut])
    if kind == "retype":
        return retyped(source, rng)
    if kind == "token" and len(layout.tokens) > 1:
        a, n = rng.choice(layout.tokens)
        same = [t for t in layout.tokens if t[1] == n and t[0] != a]
        if same:
            b, _ = rng.choice(same)
            data[b:b + n] = data[a:a + n]
            return f"token at byte {b} made a duplicate of the one at byte {a}", bytes(data)
    return gguf_insertion(layout, rng)


def _slot_kind(label: str, layout: GGUFLayout) -> str:
    if label.startswith("header."):
        return "header"
    return "tensor" if label.rsplit(".", 1)[0] in layout.tensor_names else "metadata"


RETYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "IQ4_NL")  # types a 64-wide row can hold


def retyped(source: Path, rng) -> tuple[str, bytes]:
    """The GGUF written whole again by gguf-py, one tensor converted to another ggml type: a correct layout,
    so only the type itself is hostile."""
    from gguf import GGMLQuantizationType, GGUFReader

    reader = GGUFReader(source)
    target = rng.choice(reader.tensors).name
    qtype = GGMLQuantizationType[rng.choice(RETYPES)]
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "retyped.gguf"
        written = _rewrite(reader, out, target, qtype)
        return f"{target} rewritten as {written}", out.read_bytes()


def _rewrite(reader, out: Path, target: str, qtype) -> str:
    """Write ``reader``'s file to ``out`` with ``target`` in ``qtype``; returns the type it got (F32 where
    gguf-py cannot write ``qtype`` for its shape)."""
    import numpy as np
    from gguf import GGUFValueType, GGUFWriter
    from gguf.quants import QuantError, quantize

    written = "F32"
    writer = GGUFWriter(out, reader.fields["general.architecture"].contents())
    for f in reader.fields.values():
        if not f.name.startswith("GGUF.") and f.name != "general.architecture":
            if f.types[0] == GGUFValueType.ARRAY:
                writer.add_array(f.name, f.contents())
            else:
                writer.add_key_value(f.name, f.contents(), f.types[0])
    for t in reader.tensors:
        data = np.array(t.data, dtype=np.float32).reshape([int(d) for d in reversed(t.shape)])
        if t.name == target:
            try:
                writer.add_tensor(t.name, quantize(data, qtype), raw_dtype=qtype)
                written = qtype.name
                continue
            except (QuantError, ValueError, NotImplementedError):  # gguf-py cannot write it for this shape
                pass
        writer.add_tensor(t.name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return written


def gguf_insertion(layout: GGUFLayout, rng) -> tuple[str, bytes]:
    """A metadata entry added: general.alignment, deeply nested arrays, or a key given twice."""
    kind = rng.choice(["alignment", "nested", "duplicate"])
    if kind == "alignment":
        value = rng.choice((0, 1, 3, 7, 16, 48, 64, 2**31, 2**32 - 1))
        blob = gguf_string("general.alignment") + struct.pack("<II", 4, value)
        return f"general.alignment = {value}", layout.insert_kv(blob, value if 0 < value <= 4096 else 32)
    if kind == "nested":
        depth = rng.choice((100, 5000, 100_000))
        nest = struct.pack("<IQ", 9, 1) * depth + struct.pack("<IQI", 4, 1, 7)
        blob = gguf_string("fuzz.nested") + struct.pack("<I", 9) + nest
        return f"fuzz.nested: arrays nested {depth} deep", layout.insert_kv(blob)
    blob = gguf_string("general.architecture") + struct.pack("<I", 8) + gguf_string("llama")
    return "general.architecture given twice (qwen3, then llama)", layout.insert_kv(blob)


def gguf_cases(ctx: FuzzContext, n: int) -> Iterator[CaseResult]:
    name = component_of_kind(ctx.bundle, "gguf")[0]
    source = ctx.bundle / layout_file(ctx.bundle, name)
    layout = GGUFLayout(source)
    for _ in range(n):
        what, data = gguf_mutations(layout, ctx.rng, source)

        def write(bundle: Path, data=data) -> str:
            replace_file(bundle / layout_file(bundle, name), data)
            return name

        yield bundle_case(ctx, "gguf", what, write)


def layout_file(bundle: Path, component: str) -> str:
    return json.loads((bundle / "manifest.json").read_text())["components"][component]["file"]


# --- manifest -------------------------------------------------------------------------------------

HOSTILE_VALUES = [math.nan, math.inf, -math.inf, 1e308, -1, 0, 10**9, 10**30, 0.5, "x", "", [], {}, None, True,
                  "a" * 100_000, [[[[]]]], {"a": {"b": {}}}, "../../etc/passwd", "/dev/zero", "\x1b[2J\x00"]
HOSTILE_TEMPLATES = [
    "{{ 1 / 0 }}", "{{ 'x' * 10**12 }}", "{% for a in range(10**6) %}{% for b in range(10**6) %}x{% endfor %}{% endfor %}",
    "{{ undefined_thing.attr.more }}", "{% raw %}unterminated", "{{ ().__class__.__base__.__subclasses__() }}",
    "{% for m in messages %}{{ m['content'] * 100000 }}{% endfor %}", "{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}",
]
HOSTILE_FORMATS = ["{question", "{0}{1}{2}", "{audio.__class__.__mro__}", "{question:>999999999}", "}{", "{audio}" * 10_000]


def json_paths(node, path=()) -> Iterator[tuple]:
    yield path
    if isinstance(node, dict):
        for k, v in node.items():
            yield from json_paths(v, path + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from json_paths(v, path + (i,))


def manifest_mutation(m: dict, rng) -> tuple[str, str]:
    """One hostile manifest: (what was done, the manifest's text)."""
    kind = rng.choice(["value", "value", "value", "delete", "template", "format", "raw"])
    if kind == "raw":
        text = json.dumps(m)
        choice = rng.choice(["truncated", "nested", "bom", "latin1"])
        if choice == "truncated":
            return "manifest truncated", text[:rng.randrange(len(text))]
        if choice == "nested":
            depth = rng.choice((1000, 100_000))
            return f"manifest nested {depth} deep", "[" * depth + "]" * depth
        if choice == "bom":
            return "manifest starts with a BOM", "\ufeff" + text
        return "manifest with a byte that is not UTF-8", text.replace("qwen3", "qw\udcffen3", 1)
    if kind == "template":
        m.setdefault("prompt", {})["chat_template"] = template = rng.choice(HOSTILE_TEMPLATES)
        m["prompt"].setdefault("audio_placeholder", "<|audio|>")
        return f"prompt.chat_template = {template[:60]!r}", json.dumps(m)
    if kind == "format":
        value = rng.choice(HOSTILE_FORMATS)
        m.setdefault("prompt", {})["user_template"] = value
        return f"prompt.user_template = {value[:60]!r}", json.dumps(m)
    path = rng.choice([p for p in json_paths(m) if p])
    parent = m
    for k in path[:-1]:
        parent = parent[k]
    label = ".".join(str(k) for k in path)
    if kind == "delete":
        del parent[path[-1]]
        return f"{label} deleted", json.dumps(m)
    value = rng.choice(HOSTILE_VALUES)
    parent[path[-1]] = value
    return f"{label} = {value!r}"[:120], json.dumps(m)


def manifest_cases(ctx: FuzzContext, n: int) -> Iterator[CaseResult]:
    pristine = (ctx.bundle / "manifest.json").read_text()
    for _ in range(n):
        what, text = manifest_mutation(json.loads(pristine), ctx.rng)

        def write(bundle: Path, text=text) -> None:
            replace_file(bundle / "manifest.json", text.encode("utf-8", "surrogateescape"))

        yield bundle_case(ctx, "manifest", what, write)


# --- onnx -----------------------------------------------------------------------------------------


def onnx_mutation(model, rng) -> tuple[str, bytes]:
    """One hostile change to an ONNX model: (what was done, the new file's bytes)."""
    from onnx import TensorProto, helper

    g = model.graph
    kind = rng.choice(["rename", "dtype", "shape", "bytes", "nan", "tokens", "alloc", "opset", "loop"])
    if kind == "rename":
        io = rng.choice([g.input, g.output])[0]
        old, io.name = io.name, "renamed"
        return f"graph value {old!r} renamed", model.SerializeToString()
    if kind == "dtype":
        io = rng.choice([g.input, g.output])[0]
        t = rng.choice([TensorProto.INT64, TensorProto.FLOAT16, TensorProto.STRING, TensorProto.DOUBLE])
        io.type.tensor_type.elem_type = t
        return f"{io.name} dtype -> {TensorProto.DataType.Name(t)}", model.SerializeToString()
    if kind == "shape":
        io = rng.choice([g.input, g.output])[0]
        dims = io.type.tensor_type.shape.dim
        i = rng.randrange(len(dims))
        v = rng.choice((0, 1, 7, 2**40))
        dims[i].dim_value = v
        return f"{io.name} dim {i} -> {v}", model.SerializeToString()
    if kind == "bytes":
        data = bytearray(model.SerializeToString())
        if rng.random() < 0.5:
            cut = rng.randrange(len(data))
            return f"truncated to {cut} of {len(data)} bytes", bytes(data[:cut])
        spots = sorted(rng.randrange(len(data)) for _ in range(8))
        for s in spots:
            data[s] ^= 0xFF
        return f"bytes flipped at {spots}", bytes(data)
    if kind == "opset":
        model.opset_import[0].version = 99
        return "opset 99", model.SerializeToString()
    out = g.output[0]
    inner = out.name + "_fuzz"
    for node in g.node:
        node.output[:] = [inner if o == out.name else o for o in node.output]
    rank = len(out.type.tensor_type.shape.dim)
    if kind == "nan":
        g.initializer.append(helper.make_tensor("fuzz_nan", TensorProto.FLOAT, [], [math.nan]))
        g.node.append(helper.make_node("Mul", [inner, "fuzz_nan"], [out.name]))
        what = f"{out.name} times NaN"
    elif kind == "tokens":
        repeats = rng.choice((0, 200))
        if repeats == 0:
            for name, v in (("fuzz_s", 0), ("fuzz_e", 0), ("fuzz_a", 1)):
                g.initializer.append(helper.make_tensor(name, TensorProto.INT64, [1], [v]))
            g.node.append(helper.make_node("Slice", [inner, "fuzz_s", "fuzz_e", "fuzz_a"], [out.name]))
            what = f"{out.name} cut to 0 rows"
        else:
            g.initializer.append(helper.make_tensor("fuzz_r", TensorProto.INT64, [rank], [1, repeats] + [1] * (rank - 2)))
            g.node.append(helper.make_node("Tile", [inner, "fuzz_r"], [out.name]))
            what = f"{out.name} tiled x{repeats} along axis 1"
    elif kind == "alloc":
        g.initializer.append(helper.make_tensor("fuzz_shape", TensorProto.INT64, [3], [2**20, 2**20, 64]))
        g.node.append(helper.make_node("ConstantOfShape", ["fuzz_shape"], ["fuzz_big"]))
        g.node.append(helper.make_node("Add", [inner, "fuzz_big"], [out.name]))
        what = f"{out.name} plus a 2^46-element constant"
    else:  # loop: 2^62 iterations of an identity body
        body = helper.make_graph(
            [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Identity", ["v_in"], ["v_out"])],
            "fuzz_body",
            [helper.make_tensor_value_info("i", TensorProto.INT64, []),
             helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
             helper.make_tensor_value_info("v_in", TensorProto.FLOAT, None)],
            [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
             helper.make_tensor_value_info("v_out", TensorProto.FLOAT, None)])
        g.initializer.append(helper.make_tensor("fuzz_m", TensorProto.INT64, [], [2**62]))
        g.initializer.append(helper.make_tensor("fuzz_c", TensorProto.BOOL, [], [True]))
        g.node.append(helper.make_node("Loop", ["fuzz_m", "fuzz_c", inner], [out.name], body=body))
        what = f"{out.name} through a Loop of 2^62 iterations"
    return what, model.SerializeToString()


def onnx_cases(ctx: FuzzContext, n: int) -> Iterator[CaseResult]:
    import onnx

    m = json.loads((ctx.bundle / "manifest.json").read_text())
    names = component_of_kind(ctx.bundle, "onnx")
    for _ in range(n):
        name = ctx.rng.choice(names)
        model = onnx.load(str(ctx.bundle / m["components"][name]["file"]))
        what, data = onnx_mutation(model, ctx.rng)

        def write(bundle: Path, data=data, name=name) -> str:
            replace_file(bundle / m["components"][name]["file"], data)
            return name

        yield bundle_case(ctx, "onnx", f"{name}: {what}", write)
