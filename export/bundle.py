"""Open or start a bundle's manifest from a checkpoint's family: the fields every export step shares."""

from __future__ import annotations

from pathlib import Path

from gamma_rt import __version__
from gamma_rt.errors import BundleError
from gamma_rt.manifest import MANIFEST_NAME, Manifest


def tool_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"gamma-rt": __version__}
    for pkg in ("torch", "transformers", "onnx", "onnxruntime", "gguf", "llama-cpp-python", "numpy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def open_bundle(source, bundle: str | Path) -> Manifest:
    """The bundle's manifest, created from the source's family if the bundle is new.

    ``source`` is an opened family (export/families). Exporting into an existing bundle made from another
    checkpoint is refused: its parts would not fit.
    """
    bundle = Path(bundle)
    bundle.mkdir(parents=True, exist_ok=True)
    source_hash = source.hash()
    if (bundle / MANIFEST_NAME).exists():
        m = Manifest.read(bundle)
        if m.source.get("checkpoint_sha256") != source_hash:
            raise BundleError(
                f"{bundle / MANIFEST_NAME}: field source.checkpoint_sha256 names another checkpoint; "
                "export into a new bundle folder"
            )
        m.tools.update(tool_versions())
        return m
    sections = source.manifest_sections()
    return Manifest(
        audio=sections["audio"],
        prompt=sections["prompt"],
        llm=sections["llm"],
        source={"checkpoint_sha256": source_hash, **sections["source"]},
        tools=tool_versions(),
        created_by=f"gamma-rt {__version__}",
    )
