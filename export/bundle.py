"""Open or start a bundle's manifest from a checkpoint: the fields every export step shares."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from gamma_rt import __version__
from gamma_rt.errors import BundleError
from gamma_rt.manifest import MANIFEST_NAME, Manifest

from .checkpoint import Checkpoint


def tool_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"gamma-rt": __version__}
    for pkg in ("torch", "transformers", "onnx", "onnxruntime", "gguf", "llama-cpp-python", "numpy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def open_bundle(ckpt: Checkpoint, bundle: str | Path) -> Manifest:
    """The bundle's manifest, created from the checkpoint's config if the bundle is new.

    Exporting into an existing bundle made from another checkpoint is refused: its parts would not fit.
    """
    bundle = Path(bundle)
    bundle.mkdir(parents=True, exist_ok=True)
    source_hash = ckpt.hash()
    if (bundle / MANIFEST_NAME).exists():
        m = Manifest.read(bundle)
        if m.source.get("checkpoint_sha256") != source_hash:
            raise BundleError(
                f"{bundle / MANIFEST_NAME}: field source.checkpoint_sha256 names another checkpoint; "
                "export into a new bundle folder"
            )
        m.tools.update(tool_versions())
        return m
    cfg = ckpt.config
    audio = dataclasses.asdict(cfg.audio)
    audio.update(
        window_samples=cfg.audio.window_samples,
        window_frames=cfg.audio.window_frames,
        encoder_tokens_per_window=cfg.encoder_tokens_per_window,
        tokens_per_window=cfg.tokens_per_window,
        pool_stride=cfg.projector.pool_stride,
    )
    return Manifest(
        audio=audio,
        prompt=dataclasses.asdict(cfg.prompt),
        llm={"n_embd": cfg.llm.hidden_size, "n_vocab": cfg.llm.vocab_size, "n_layer": cfg.llm.num_hidden_layers},
        source={"checkpoint_sha256": source_hash, "preset": cfg.preset, "family": cfg.family},
        tools=tool_versions(),
        created_by=f"gamma-rt {__version__}",
    )
