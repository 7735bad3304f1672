"""An audio graph checked against the manifest when it loads: the graph file is untrusted input.

Two checks, before any window runs through the graph:

- :func:`check_signature`: the ONNX Runtime session's inputs and outputs against the manifest's
  ``components.<key>.inputs/outputs`` (names, dtypes, ranks, fixed dimensions) and the chain step that feeds
  it. A renamed input or a wrong dtype is one line naming the field, not an ORT traceback at the first window.
- :func:`control_flow_ops`: the op types of the graph, its subgraphs and its functions, read from the ONNX
  protobuf with a small reader (the runtime does not depend on the ``onnx`` package). Audio graphs are
  straight-line; a ``Loop`` of 2^62 iterations would run for ever, so Loop, Scan and If are refused.
"""

from __future__ import annotations

from pathlib import Path

from gamma_rt.errors import BundleError

CONTROL_FLOW = ("Loop", "Scan", "If")
# ONNX Runtime's type names -> the manifest's
ORT_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(bfloat16)": "bfloat16",
              "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(int8)": "int8", "tensor(uint8)": "uint8",
              "tensor(bool)": "bool"}

# field numbers of the ONNX protobuf messages read here (onnx/onnx.proto)
_MODEL_GRAPH, _MODEL_FUNCTIONS = 7, 25
_GRAPH_NODE = 1
_FUNCTION_NODE = 7
_NODE_OP_TYPE, _NODE_ATTRIBUTE = 4, 5
_ATTRIBUTE_GRAPH, _ATTRIBUTE_GRAPHS = 6, 11
MAX_NESTING = 64


def check_signature(session, spec, step, key: str, where: str) -> None:
    """``session``'s inputs and outputs against the manifest's ``spec`` (a Component) and chain ``step``."""
    for kind, declared, actual in (("inputs", spec.inputs, session.get_inputs()),
                                   ("outputs", spec.outputs, session.get_outputs())):
        graph = {a.name: a for a in actual}
        names = [t.name for t in declared]
        if sorted(names) != sorted(graph):
            raise BundleError(f"{where}: field components.{key}.{kind} names {names}; the graph's {kind} are "
                              f"{sorted(graph)}")
        for i, t in enumerate(declared):
            _check_tensor(t, graph[t.name], f"components.{key}.{kind}[{i}]", where)
    fed, made = set(step.inputs), set(step.outputs)
    if fed != {t.name for t in spec.inputs}:
        raise BundleError(f"{where}: field audio.chain step {step.component!r} feeds {sorted(fed)}; the graph "
                          f"takes {sorted(t.name for t in spec.inputs)}")
    if not made <= {t.name for t in spec.outputs}:
        raise BundleError(f"{where}: field audio.chain step {step.component!r} reads outputs {sorted(made)}; the "
                          f"graph makes {sorted(t.name for t in spec.outputs)}")


def _check_tensor(declared, actual, path: str, where: str) -> None:
    dtype = ORT_DTYPES.get(actual.type, actual.type)
    if dtype != declared.dtype:
        raise BundleError(f"{where}: field {path}.dtype is {declared.dtype!r}; the graph's {declared.name!r} is "
                          f"{dtype}")
    shape = list(actual.shape or [])
    if len(shape) != len(declared.shape):
        raise BundleError(f"{where}: field {path}.shape is {declared.shape}; the graph's {declared.name!r} has "
                          f"rank {len(shape)} ({shape})")
    for j, (ours, theirs) in enumerate(zip(declared.shape, shape)):
        if isinstance(theirs, int) and theirs != ours:
            raise BundleError(f"{where}: field {path}.shape[{j}] is {ours!r}; the graph's {declared.name!r} has "
                              f"{theirs} there")


def control_flow_ops(path: Path) -> set[str]:
    """The control-flow op types (CONTROL_FLOW) anywhere in the ONNX model at ``path``: its graph, the
    subgraphs in node attributes and the model's functions. Raises BundleError when the file is not a
    readable protobuf."""
    view = memoryview(Path(path).read_bytes())  # weights past 2 GiB are in external files, not read here
    found: set[str] = set()
    try:
        for field, value in _fields(view):
            if field == _MODEL_GRAPH:
                _graph_ops(value, _GRAPH_NODE, found, 0)
            elif field == _MODEL_FUNCTIONS:
                _graph_ops(value, _FUNCTION_NODE, found, 0)
    except (ValueError, IndexError) as e:
        raise BundleError(f"{path}: not an ONNX model ({e})") from None
    return found


def _graph_ops(graph: memoryview, node_field: int, found: set, depth: int) -> None:
    if depth > MAX_NESTING:
        raise ValueError(f"subgraphs nested more than {MAX_NESTING} deep")
    for field, node in _fields(graph):
        if field != node_field:
            continue
        for nfield, value in _fields(node):
            if nfield == _NODE_OP_TYPE:
                op = bytes(value).decode("utf-8", "replace")
                if op in CONTROL_FLOW:
                    found.add(op)
            elif nfield == _NODE_ATTRIBUTE:
                for afield, sub in _fields(value):
                    if afield in (_ATTRIBUTE_GRAPH, _ATTRIBUTE_GRAPHS):
                        _graph_ops(sub, _GRAPH_NODE, found, depth + 1)


def _fields(buf: memoryview):
    """(field number, value) of each length-delimited field of one protobuf message; other wire types
    are skipped."""
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            _, pos = _varint(buf, pos)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            size, pos = _varint(buf, pos)
            if pos + size > end:
                raise ValueError("a field runs past the end of its message")
            yield field, buf[pos:pos + size]
            pos += size
        else:
            raise ValueError(f"wire type {wire}")
    if pos > end:
        raise ValueError("truncated message")


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")
