"""``gamma-rt export onnx``: the audio side of a checkpoint as ONNX graphs in a bundle.

The checkpoint's family (export/families) declares its graphs and their fixed I/O; the manifest's
``audio.chain`` says how the runtime chains them. Music Flamingo / Audio Flamingo 3: ``encoder`` (mel,
mel_mask -> hidden (batch, 750, 1280)) and ``projector`` (hidden [, window_index] -> embeddings). GaMMA:

    temporal_encoder  mel (batch, n_mels, 3000) float32, Whisper log10 scale -> hidden (batch, 1500, d)
    global_encoder    mel (batch, n_mels, 3000)                               -> hidden (batch, 1500, d)
    fusion            temporal (batch, 1500, d), global (batch, 1500, d)      -> fused  (batch, 1500, d)
    projector         fused (batch, 1500, d)                                  -> embeddings (batch, 750, n_embd)

fp32 graphs are recorded as ``<component>`` in ``<component>.onnx``; fp16 ones as ``<component>.fp16`` in
``<component>.fp16.onnx``, so one bundle can hold both. Inputs and outputs are float32 at both precisions.

Each component is loaded alone from the checkpoint, traced, freed, then optimized by ONNX Runtime's
transformer optimizer on the graph without its weights. Measured on the `full` preset (2.5 GB fp32 per
Whisper-large-v3 expert): peak RSS 4.1 GiB for fp32, 7.6 GiB for fp16 (bench/full_export.py).
"""

from __future__ import annotations

import argparse
import gc
import tempfile
from pathlib import Path

from gamma_rt.errors import GammaError
from gamma_rt.components import component_key
from gamma_rt.hashing import sha256_file
from gamma_rt.manifest import Component, Manifest, TensorSpec

PRECISIONS = ("fp32", "fp16")
DEFAULT_OPSET = 17
# LayerNormalization is an ONNX op from opset 17; the TorchScript exporter stops at 20.
OPSETS = range(17, 21)
BATCH = "batch"

HELP = """\
Export the audio side of a checkpoint into BUNDLE as ONNX graphs. GaMMA:
  temporal_encoder, global_encoder  log-mel (batch, 128, 3000) -> hidden states (batch, 1500, d)
  fusion                            both experts' hidden states -> fused (batch, 1500, d)
  projector                         fused -> LLM embeddings (batch, 750, n_embd)
Music Flamingo / Audio Flamingo 3 (their published Hugging Face folders):
  encoder                           log-mel, mel_mask (frames of real audio) -> hidden (batch, 750, d)
  projector                         hidden [, window_index for RoTE] -> LLM embeddings (batch, 750, n_embd)
Graphs take any batch size, are optimized by ONNX Runtime (LayerNorm, GELU and attention fusions) and are
recorded in BUNDLE/manifest.json. Run it again with the other --precision to hold both in one bundle.

example: gamma-rt export onnx ckpt --out bundle --precision fp16
"""


def register(export_sub: argparse._SubParsersAction) -> None:
    p = export_sub.add_parser(
        "onnx",
        help="export the audio side (encoders, fusion, projector) to ONNX graphs",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("checkpoint", type=Path, help="checkpoint folder (GaMMA, Music Flamingo, Audio Flamingo 3)")
    p.add_argument("--out", required=True, type=Path, metavar="BUNDLE", help="bundle folder (created, or merged into)")
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="weight and compute precision (default fp32); inputs and outputs stay float32",
    )
    p.add_argument("--opset", type=int, choices=OPSETS, default=DEFAULT_OPSET, metavar="N",
                   help=f"ONNX opset, {OPSETS.start}-{OPSETS.stop - 1} (default {DEFAULT_OPSET})")
    p.set_defaults(func=_cmd_export_onnx)


def _cmd_export_onnx(args) -> int:
    from gamma_rt.progress import track

    manifest = export_onnx(args.checkpoint, args.out, precision=args.precision, opset=args.opset, progress=track)
    for key, c in manifest.components.items():
        if c.kind != "onnx" or c.precision != args.precision or c.extra.get("for") == "tensorrt":
            continue
        print(f"{key}: {c.file} ({c.bytes / 1e6:.1f} MB{' + external data' if c.external_data else ''})")
    print(f"wrote {args.out / 'manifest.json'}")
    return 0


def export_onnx(
    checkpoint_dir: str | Path,
    bundle_dir: str | Path,
    precision: str = "fp32",
    opset: int = DEFAULT_OPSET,
    progress=None,
) -> Manifest:
    """Export the audio-side graphs of ``checkpoint_dir`` (any registered family) into ``bundle_dir``.

    An existing bundle is merged into if it was made from the same checkpoint, refused otherwise.
    """
    from .bundle import open_bundle
    from .families import detect

    if precision not in PRECISIONS:
        raise GammaError(f"precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if opset not in OPSETS:
        raise GammaError(f"opset {opset}: choose {OPSETS.start}-{OPSETS.stop - 1} (LayerNormalization needs 17)")
    bundle = Path(bundle_dir)
    family = detect(checkpoint_dir)
    graphs = family.graphs()
    family.check()
    manifest = open_bundle(family, bundle)
    for graph in progress(graphs, description=f"onnx {precision}") if progress else graphs:
        key = component_key(graph.name, precision)
        component = _export_component(graph, bundle / f"{key}.onnx", precision, opset)
        manifest.add_file(bundle, key, component)
        manifest.write(bundle)  # after each graph, so an interrupted export leaves a truthful manifest
    return manifest


def _export_component(graph, out: Path, precision: str, opset: int) -> Component:
    """Trace one component to a temporary fp32 graph, optimize and convert it into ``out``, check it."""
    from .onnx_optimize import check_graph, optimize_graph

    # Large graphs are written as one file per tensor by the tracer; keep them out of the bundle.
    with tempfile.TemporaryDirectory(prefix=f".{graph.name}-", dir=out.parent) as tmp:
        raw = Path(tmp) / "raw.onnx"
        trace_graph(graph.build(), graph.inputs, graph.outputs, raw, opset)
        gc.collect()  # the component's weights are gone before the optimizer loads the graph
        external, fusions = optimize_graph(raw, out, graph.n_heads, graph.d_model, precision, graph.fp32_scopes)
    check_graph(out)
    return Component(
        kind="onnx",
        file=out.name,
        sha256="",
        bytes=0,
        precision=precision,
        inputs=graph.inputs,
        outputs=graph.outputs,
        opset=opset,
        external_data=external,
        extra={
            "ort_optimized": True,
            "fusions": fusions,
            "exporter": "torch.onnx (TorchScript)",
            # ``sha256``/``bytes`` cover the graph file only; the weights past 2 GiB are checked by these.
            "external_data_sha256": {name: sha256_file(out.parent / name) for name in external},
            "external_data_bytes": {name: (out.parent / name).stat().st_size for name in external},
        },
    )


def trace_graph(module, inputs: list[TensorSpec], outputs: list[TensorSpec], raw: Path, opset: int) -> None:
    """Run ``torch.onnx.export`` on a float32 module with one example window (int64 inputs: ones)."""
    import warnings

    import torch

    gen = torch.Generator().manual_seed(0)
    example = tuple(
        torch.ones(1, *spec.shape[1:], dtype=torch.int64) if spec.dtype == "int64"
        else torch.randn(1, *spec.shape[1:], generator=gen)
        for spec in inputs
    )
    axes = {spec.name: {0: BATCH} for spec in [*inputs, *outputs]}
    with torch.no_grad(), warnings.catch_warnings():
        # The TorchScript exporter warns that it is deprecated and that WhisperEncoder's frame-count check
        # is traced as a constant; both are expected (the graph takes exactly 3000 frames by design).
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            example,
            str(raw),
            input_names=[s.name for s in inputs],
            output_names=[s.name for s in outputs],
            dynamic_axes=axes,
            opset_version=opset,
            dynamo=False,
        )
    del module

