"""Plain ONNX graphs for TensorRT: the audio components traced without ONNX Runtime's fusions.

``gamma-rt export onnx`` optimizes its graphs for ONNX Runtime, which replaces LayerNorm/GELU/attention
patterns by ``com.microsoft`` contrib operators (SkipLayerNormalization, BiasGelu, ...). TensorRT's ONNX
parser does not know those operators, and does the same fusions itself. So engines are built from
``<component>.plain.onnx``: the same trace (same inputs, outputs, batch axis), fp32, standard operators only.

TensorRT 11 builds strongly typed networks only, so the precision must be in the graph: ``precisions``
adds ``<component>.plain.fp16`` / ``.plain.bf16``, the plain graph cast to fp16 (bf16) inside, with its
inputs and outputs kept float32 (the runtime's buffers do not change with the precision).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from gamma_rt.errors import GammaError
from gamma_rt.manifest import Component, Manifest

PLAIN = "plain"
CAST_PRECISIONS = ("fp16", "bf16")


def plain_name(name: str, precision: str = "fp32") -> str:
    """``temporal_encoder.plain`` (fp32) or ``temporal_encoder.plain.fp16``."""
    return f"{name}.{PLAIN}" if precision == "fp32" else f"{name}.{PLAIN}.{precision}"


def export_plain_graphs(checkpoint_dir: str | Path, bundle_dir: str | Path, opset: int = 17, progress=None,
                        precisions: tuple[str, ...] = ("fp32",)) -> Manifest:
    """Trace the audio graphs of ``checkpoint_dir`` (any registered family) into ``bundle_dir`` as
    ``<name>.plain.onnx``, plus a ``<name>.plain.<p>.onnx`` cast copy per precision ``p`` in ``precisions``
    other than fp32."""
    import onnx

    from .bundle import open_bundle
    from .families import detect
    from .onnx_export import trace_graph

    bundle = Path(bundle_dir)
    family = detect(checkpoint_dir)
    graphs = family.graphs()
    family.check()
    manifest = open_bundle(family, bundle)
    for graph in progress(graphs, description="plain onnx") if progress else graphs:
        name, inputs, outputs = graph.name, graph.inputs, graph.outputs
        out = bundle / f"{plain_name(name)}.onnx"
        with tempfile.TemporaryDirectory(prefix=f".{name}-", dir=bundle) as tmp:
            raw = Path(tmp) / "raw.onnx"
            trace_graph(graph.build(), inputs, outputs, raw, opset)
            _save(onnx.load(str(raw)), out)  # onnx.load also reads the tracer's one-file-per-tensor data
            for precision in precisions:
                if precision != "fp32":
                    _save(cast_graph(raw, precision, graph.fp32_scopes), bundle / f"{plain_name(name, precision)}.onnx")
        for precision in dict.fromkeys(("fp32", *precisions)):
            path = bundle / f"{plain_name(name, precision)}.onnx"
            data = path.name + ".data"
            component = Component(kind="onnx", file=path.name, sha256="", bytes=0, precision=precision, inputs=inputs,
                                  outputs=outputs, opset=opset,
                                  external_data=[data] if (bundle / data).exists() else [],
                                  extra={"ort_optimized": False, "for": "tensorrt",
                                         "exporter": "torch.onnx (TorchScript)"})
            manifest.add_file(bundle, plain_name(name, precision), component)
        manifest.write(bundle)
    return manifest


def _save(model, out: Path) -> None:
    """One weights file beside the graph (a 1.3 B-parameter expert is over protobuf's 2 GB limit)."""
    import onnx

    data = out.name + ".data"
    for stale in (out, out.parent / data):
        stale.unlink(missing_ok=True)
    onnx.save_model(model, str(out), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data, size_threshold=1024)


def cast_graph(raw: Path, precision: str, fp32_scopes: tuple[str, ...] = ()):
    """The fp32 graph at ``raw`` with every float tensor inside cast to ``precision`` (fp16 or bf16); inputs and
    outputs stay float32, converted by Cast nodes at the edges, and so do the nodes under the family's
    ``fp32_scopes`` (Music Flamingo's RoTE). Standard operators only."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from .onnx_optimize import bypass_fp16_round_trips, fp32_nodes

    if precision not in CAST_PRECISIONS:
        raise GammaError(f"plain graphs: precision {precision!r}: choose fp32, {', '.join(CAST_PRECISIONS)}")
    keep = fp32_nodes(onnx.load(str(raw), load_external_data=False), tuple(fp32_scopes)) if fp32_scopes else None
    # The path form runs ONNX's shape inference on the file, which works past protobuf's 2 GB.
    # forcing every initializer to fp16 would round the kept scope's constants too (RoTE's frequencies)
    model = convert_float_to_float16(str(raw), keep_io_types=True, op_block_list=[], node_block_list=keep,
                                     force_fp16_initializers=not keep)
    if keep:
        bypass_fp16_round_trips(model)
    if precision == "bf16":
        _float16_to_bfloat16(model)
    return model


def _float16_to_bfloat16(model) -> None:
    """Every float16 type, initializer, constant and Cast target of ``model`` becomes bfloat16 (round to nearest even)."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    T = onnx.TensorProto

    def tensor(t):
        if t.data_type != T.FLOAT16:
            return
        bits = numpy_helper.to_array(t).astype(np.float32).view(np.uint32)
        bf16 = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
        t.CopyFrom(onnx.helper.make_tensor(t.name, T.BFLOAT16, t.dims, bf16.tobytes(), raw=True))

    g = model.graph
    for t in g.initializer:
        tensor(t)
    for vi in [*g.input, *g.output, *g.value_info]:
        if vi.type.tensor_type.elem_type == T.FLOAT16:
            vi.type.tensor_type.elem_type = T.BFLOAT16
    for n in g.node:
        for a in n.attribute:
            if a.name == "to" and a.i == T.FLOAT16:
                a.i = T.BFLOAT16
            elif a.type == onnx.AttributeProto.TENSOR:
                tensor(a.t)
