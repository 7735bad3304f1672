"""Plain ONNX graphs for TensorRT: the audio components traced without ONNX Runtime's fusions.

``gamma-rt export onnx`` optimizes its graphs for ONNX Runtime, which replaces LayerNorm/GELU/attention
patterns by ``com.microsoft`` contrib operators (SkipLayerNormalization, BiasGelu, ...). TensorRT's ONNX
parser does not know those operators, and does the same fusions itself. So engines are built from
``<component>.plain.onnx``: the same trace (same inputs, outputs, batch axis), fp32, standard operators only.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from gamma_rt.manifest import AUDIO_COMPONENTS, Component, Manifest

PLAIN = "plain"


def plain_name(name: str) -> str:
    return f"{name}.{PLAIN}"


def export_plain_graphs(checkpoint_dir: str | Path, bundle_dir: str | Path, opset: int = 17, progress=None) -> Manifest:
    """Trace the four audio components of ``checkpoint_dir`` into ``bundle_dir`` as ``<name>.plain.onnx``."""
    import onnx

    from .bundle import open_bundle
    from .checkpoint import Checkpoint
    from .onnx_export import _trace, graph_io

    bundle = Path(bundle_dir)
    ckpt = Checkpoint(checkpoint_dir)
    ckpt.verify()
    manifest = open_bundle(ckpt, bundle)
    steps = progress(list(AUDIO_COMPONENTS), description="plain onnx") if progress else AUDIO_COMPONENTS
    for name in steps:
        inputs, outputs = graph_io(ckpt.config, name)
        out = bundle / f"{plain_name(name)}.onnx"
        with tempfile.TemporaryDirectory(prefix=f".{name}-", dir=bundle) as tmp:
            raw = Path(tmp) / "raw.onnx"
            _trace(ckpt, name, inputs, outputs, raw, opset)
            model = onnx.load(str(raw))  # also reads the tracer's one-file-per-tensor data of big graphs
            # One weights file beside the graph (a 1.3 B-parameter expert is over protobuf's 2 GB limit).
            data = out.name + ".data"
            for stale in (out, bundle / data):
                stale.unlink(missing_ok=True)
            onnx.save_model(model, str(out), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=data, size_threshold=1024)
        component = Component(kind="onnx", file=out.name, sha256="", bytes=0, precision="fp32", inputs=inputs,
                              outputs=outputs, opset=opset, external_data=[data] if (bundle / data).exists() else [],
                              extra={"ort_optimized": False, "for": "tensorrt", "exporter": "torch.onnx (TorchScript)"})
        manifest.add_file(bundle, plain_name(name), component)
        manifest.write(bundle)
    return manifest
