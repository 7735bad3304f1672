"""ONNX Runtime's offline graph optimizations for one exported graph, then fp16 conversion if asked.

The plain graph from ``torch.onnx.export`` goes through ``onnxruntime.transformers.optimizer``: it fuses
LayerNorm + residual into ``SkipLayerNormalization`` and the erf GELU (with its bias) into ``BiasGelu`` /
``Gelu``. These fusions are pure graph rewrites (``opt_level=0``: no session-level, machine-specific
passes), so the saved graph runs on any ONNX Runtime execution provider.

``optimum`` is not used: its ``ORTOptimizer`` wraps this same optimizer and adds nothing for graphs that
are not ``transformers`` models it knows by name.

fp16: weights and compute become float16 while graph inputs and outputs stay float32 (``keep_io_types``),
so the runtime always feeds float32 and reads float32.
"""

from __future__ import annotations

from pathlib import Path

import onnx

# Protobuf cannot hold a model past 2 GiB; stay clear of the edge.
EXTERNAL_DATA_BYTES = 1_800_000_000


def optimize_graph(
    raw: Path, out: Path, n_heads: int, d_model: int, precision: str
) -> tuple[list[str], dict[str, int]]:
    """Optimize ``raw`` (fp32 ONNX), convert to ``precision``, save as ``out``.

    Returns the external data files written beside ``out`` (names relative to its folder) and the
    fused operator counts (only the fusions that happened).
    """
    from onnxruntime.transformers import optimizer
    from onnxruntime.transformers.fusion_options import FusionOptions

    model = optimizer.optimize_model(
        str(raw),
        model_type="bert",
        num_heads=n_heads,
        hidden_size=d_model,
        optimization_options=FusionOptions("bert"),
        opt_level=0,
    )
    fusions = {op: n for op, n in model.get_fused_operator_statistics().items() if n}
    if precision == "fp16":
        model.convert_float_to_float16(keep_io_types=True)
    weight_bytes = sum(_tensor_bytes(t) for t in model.model.graph.initializer)
    external = weight_bytes > EXTERNAL_DATA_BYTES
    # With external data the optimizer writes every tensor into one file named ``<out>.data``.
    data_name = out.name + ".data"
    (out.parent / data_name).unlink(missing_ok=True)  # a stale one from an earlier export would be appended to
    model.save_model_to_file(str(out), use_external_data_format=external, all_tensors_to_one_file=True)
    return ([data_name] if external else []), fusions


def check_graph(path: Path) -> None:
    """``onnx.checker`` on the saved file; the path form also reads external data past 2 GiB."""
    onnx.checker.check_model(str(path), full_check=False)


def _tensor_bytes(t: onnx.TensorProto) -> int:
    n = 1
    for d in t.dims:
        n *= d
    return n * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
