"""The family registry: ``@register`` on a Family class is the whole registration.

Every subpackage of export/families/ (one per family) is imported once, on the first question asked of the
registry, so a new family folder registers itself with no other edit. Which family reads a folder is
decided by ``Family.matches``; two families that both claim one config.json are a bug, reported as such.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

from gamma_rt.errors import CheckpointError

from .base import Family
from .folder import CONFIG, read_json

FAMILIES: list[type[Family]] = []
_PACKAGE = __name__.rpartition(".")[0]
_discovered = False


def register(cls: type[Family]) -> type[Family]:
    """Class decorator: add a family to the registry."""
    if any(f.name == cls.name for f in FAMILIES):
        raise RuntimeError(f"two families are named {cls.name!r}")
    FAMILIES.append(cls)
    return cls


def discover() -> list[type[Family]]:
    """Import every subpackage of export/families/ (their ``@register`` runs); the families, by name."""
    global _discovered
    if not _discovered:
        _discovered = True
        folder = Path(__file__).parent
        for info in sorted(pkgutil.iter_modules([str(folder)]), key=lambda m: m.name):
            if info.ispkg:
                importlib.import_module(f"{_PACKAGE}.{info.name}")
    return sorted(FAMILIES, key=lambda f: f.name)


def known() -> str:
    return ", ".join(f"{f.name} ({'/'.join(f.architectures or f.model_types)})" for f in discover())


def claimant(config: dict, where: str = CONFIG) -> type[Family] | None:
    """The family class that reads a folder with this config.json, without opening the folder."""
    claimed = [f for f in discover() if f.matches(config)]
    if len(claimed) > 1:
        raise RuntimeError(f"{where}: families {', '.join(f.name for f in claimed)} all claim this folder")
    return claimed[0] if claimed else None


def detect(folder: str | Path) -> Family:
    """The family that reads ``folder``, opened on it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: checkpoint folder not found")
    path = folder / CONFIG
    if not path.is_file():
        raise CheckpointError(f"{path}: missing; is this a checkpoint folder?")
    config = read_json(path)
    family = claimant(config, str(path))
    if family is not None:
        return family(folder, config)
    archs = config.get("architectures") or config.get("model_type")
    raise CheckpointError(f"{path}: field 'architectures' is {archs}; gamma-rt knows {known()}")


def writable() -> list[type[Family]]:
    """The families ``gamma-rt init`` can write (those with presets)."""
    return [f for f in discover() if f.presets]


def family_named(name: str) -> type[Family]:
    for family in writable():
        if family.name == name:
            return family
    names = ", ".join(f.name for f in writable())
    raise CheckpointError(f"unknown family {name!r}; gamma-rt init writes {names}")
