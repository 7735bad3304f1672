"""ONNX Runtime's offline graph optimizations for one exported graph, then fp16 conversion if asked.

The plain graph from ``torch.onnx.export`` goes through ``onnxruntime.transformers.optimizer``: it fuses
LayerNorm + residual into ``SkipLayerNormalization`` and the erf GELU (with its bias) into ``BiasGelu`` /
``Gelu``. It does not match the attention these graphs trace to, so :mod:`.onnx_attention` then fuses each
head-split / MatMul / Softmax / MatMul / head-merge chain into ``com.microsoft.MultiHeadAttention``.
These fusions are pure graph rewrites (``opt_level=0``: no session-level, machine-specific
passes); the com.microsoft ops they emit run on ONNX Runtime's CPU and CUDA providers (TensorRT builds
trace their own plain graphs, see ``engines.py``).

``optimum`` is not used: its ``ORTOptimizer`` wraps this same optimizer and adds nothing for graphs that
are not ``transformers`` models it knows by name.

fp16: weights and compute become float16 while graph inputs and outputs stay float32 (``keep_io_types``),
so the runtime always feeds float32 and reads float32.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import onnx

# Protobuf cannot hold a model past 2 GiB; stay clear of the edge.
EXTERNAL_DATA_BYTES = 1_800_000_000


def optimize_graph(
    raw: Path, out: Path, n_heads: int, d_model: int, precision: str, fp32_scopes: tuple[str, ...] = ()
) -> tuple[list[str], dict[str, int]]:
    """Optimize ``raw`` (fp32 ONNX), convert to ``precision``, save as ``out``.

    In fp16 graphs, nodes whose name starts with one of ``fp32_scopes`` (torch module scopes such as
    ``/rote/``) keep computing in float32.

    Returns the external data files written beside ``out`` (names relative to its folder) and the
    fused operator counts (only the fusions that happened).

    The fusions run on the graph without its weights: with them, the optimizer's copies of the model
    take about six times its size (17 GiB for one Whisper-large-v3 encoder). Weights are read back only
    to be written out, so peak memory is about one copy (two for fp16).
    """
    from onnx.external_data_helper import load_external_data_for_model
    from onnxruntime.transformers import optimizer
    from onnxruntime.transformers.fusion_options import FusionOptions

    from .onnx_attention import FUSED_OP, fuse_attention

    _move_weights_out(raw)
    graph = onnx.load(str(raw), load_external_data=False)
    with _working_dir(raw.parent):  # a fusion that reads a weight's value finds its file from here
        model = optimizer.optimize_model(
            graph,
            model_type="bert",
            num_heads=n_heads,
            hidden_size=d_model,
            optimization_options=FusionOptions("bert"),
            opt_level=0,
        )
        attention = fuse_attention(model.model, n_heads)
        model.prune_graph()  # the head-split shape computations the fused attention left unused
        if precision == "fp16":
            _record_types(model.model)
    fusions = {op: n for op, n in model.get_fused_operator_statistics().items() if n}
    if attention:
        fusions[FUSED_OP] = attention
    load_external_data_for_model(model.model, str(raw.parent))
    if precision == "fp16":
        _to_fp16(model, fp32_nodes(model.model, tuple(fp32_scopes)))
    weight_bytes = sum(_tensor_bytes(t) for t in model.model.graph.initializer)
    external = weight_bytes > EXTERNAL_DATA_BYTES
    # With external data the optimizer writes every tensor into one file named ``<out>.data``.
    data_name = out.name + ".data"
    (out.parent / data_name).unlink(missing_ok=True)  # a stale one from an earlier export would be appended to
    model.save_model_to_file(str(out), use_external_data_format=external, all_tensors_to_one_file=True)
    return ([data_name] if external else []), fusions


def _move_weights_out(raw: Path) -> None:
    """Rewrite ``raw`` with every weight in its own file beside it (the tracer does this past 2 GiB only)."""
    model = onnx.load(str(raw), load_external_data=False)
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
        return
    onnx.save_model(model, str(raw), save_as_external_data=True, all_tensors_to_one_file=False, size_threshold=1024)


def _to_fp16(model, fp32_nodes: list[str] = ()) -> None:
    """``OnnxModel.convert_float_to_float16`` without its shape inference, which copies the weights.

    Types were recorded by :func:`_record_types` before the weights were loaded. ``fp32_nodes`` stay float32.
    """
    from onnxruntime.transformers.float16 import convert_float_to_float16

    converted = convert_float_to_float16(
        model.model, keep_io_types=True, disable_shape_infer=True, node_block_list=list(fp32_nodes) or None
    )
    if fp32_nodes:
        bypass_fp16_round_trips(converted)
    model.initialize(converted)
    model.prune_graph()
    model.remove_cascaded_cast_nodes()
    model.remove_useless_cast_nodes()


def fp32_nodes(model: onnx.ModelProto, scopes: tuple[str, ...]) -> list[str]:
    """Names of the nodes in ``scopes``, plus the constants only they read (the tracer names some
    folded constants outside any scope). Unnamed nodes get a name, since the converter blocks by name."""
    if not scopes:
        return []
    for i, n in enumerate(model.graph.node):
        n.name = n.name or f"{n.op_type}_unnamed_{i}"
    inside = {n.name for n in model.graph.node if n.name.startswith(scopes)}
    readers: dict[str, set[str]] = {}
    for n in model.graph.node:
        for name in n.input:
            readers.setdefault(name, set()).add(n.name)
    for n in model.graph.node:
        if n.op_type == "Constant" and all(readers.get(out, {""}) <= inside for out in n.output):
            inside.add(n.name)
    return sorted(inside)


def bypass_fp16_round_trips(model: onnx.ModelProto) -> None:
    """Where a float32 value is cast to float16 only to be cast back up (to float32 or float64), feed the
    second Cast the float32 value itself.

    The converter joins two float32 (blocked) nodes through a float16 tensor; ORT's cascaded-cast removal
    does not always undo it (float32 -> float16 -> float64 stays), which rounds RoTE's angles to float16.
    """
    T = onnx.TensorProto
    types = {v.name: v.type.tensor_type.elem_type for v in [*model.graph.input, *model.graph.value_info]}
    producer = {out: n for n in model.graph.node for out in n.output}

    def to(n):
        return next(a.i for a in n.attribute if a.name == "to")

    for n in model.graph.node:
        if n.op_type != "Cast" or to(n) not in (T.FLOAT, T.DOUBLE):
            continue
        down = producer.get(n.input[0])
        if down is not None and down.op_type == "Cast" and to(down) == T.FLOAT16 and types.get(down.input[0]) == T.FLOAT:
            n.input[0] = down.input[0]


def _record_types(model: onnx.ModelProto) -> None:
    """Add every intermediate tensor's element type to ``value_info``; fp16 conversion needs them.

    Symbolic shape inference, as ONNX Runtime's fp16 conversion does it, but on the graph without weights.
    Only types are kept: merged symbolic shapes can be wrong (onnxruntime issue 15521).
    """
    from onnxruntime.transformers.shape_infer_helper import SymbolicShapeInferenceHelper

    inferred = SymbolicShapeInferenceHelper(model).infer_shapes(model, auto_merge=True, guess_output_rank=False)
    known = {vi.name for vi in model.graph.value_info}
    for vi in inferred.graph.value_info:
        elem = vi.type.tensor_type.elem_type
        if vi.name and vi.name not in known and elem != onnx.TensorProto.UNDEFINED:
            model.graph.value_info.append(onnx.helper.make_tensor_value_info(vi.name, elem, None))


@contextlib.contextmanager
def _working_dir(folder: Path):
    before = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


def check_graph(path: Path) -> None:
    """``onnx.checker`` on the saved file; the path form also reads external data past 2 GiB."""
    onnx.checker.check_model(str(path), full_check=False)


def _tensor_bytes(t: onnx.TensorProto) -> int:
    n = 1
    for d in t.dims:
        n *= d
    return n * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
