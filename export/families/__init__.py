"""The model families gamma-rt exports, one registry keyed by config.json's ``architectures``.

Each family is a short class in its own module (gamma.py, flamingo.py) registered with
``@register``; ``detect(folder)`` opens a checkpoint folder as the family that reads it, and
``family_named(name)`` finds one for ``gamma-rt init --family``. A folder no family reads is refused in one
line naming its architectures and the families gamma-rt knows.
"""

from __future__ import annotations

from pathlib import Path

from gamma_rt.errors import CheckpointError

from .base import DecoderSpec, Family, GraphSpec
from .folder import CONFIG, read_json

FAMILIES: list[type[Family]] = []


def register(cls: type[Family]) -> type[Family]:
    """Class decorator: add a family to the registry (the first that matches a folder reads it)."""
    FAMILIES.append(cls)
    return cls


def _load_all() -> None:
    # Imported for their @register side effect; the order is the matching order.
    from . import flamingo, gamma, mufun, openmu  # noqa: F401


def known() -> str:
    _load_all()
    return ", ".join(f"{f.name} ({'/'.join(f.architectures or f.model_types)})" for f in FAMILIES)


def detect(folder: str | Path) -> Family:
    """The family that reads ``folder``, opened on it."""
    _load_all()
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: checkpoint folder not found")
    path = folder / CONFIG
    if not path.is_file():
        raise CheckpointError(f"{path}: missing; is this a checkpoint folder?")
    config = read_json(path)
    for family in FAMILIES:
        if family.matches(config):
            return family(folder, config)
    archs = config.get("architectures") or config.get("model_type")
    raise CheckpointError(f"{path}: field 'architectures' is {archs}; gamma-rt knows {known()}")


def family_named(name: str) -> type[Family]:
    _load_all()
    for family in FAMILIES:
        if family.name == name and family.presets:
            return family
    names = ", ".join(f.name for f in FAMILIES if f.presets)
    raise CheckpointError(f"unknown family {name!r}; gamma-rt init writes {names}")


__all__ = ["DecoderSpec", "FAMILIES", "Family", "GraphSpec", "detect", "family_named", "known", "register"]
