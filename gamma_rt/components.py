"""Names of the bundle's components in ``manifest.json``: one function, used by every stage that writes or reads them."""

from __future__ import annotations


def component_key(name: str, precision: str) -> str:
    """Manifest key of an audio component at a precision: ``fusion`` (fp32) or ``fusion.fp16``."""
    return name if precision == "fp32" else f"{name}.{precision}"
