"""Progress display for long export work (rich), quiet when stderr is not a terminal."""

from __future__ import annotations

import sys
from typing import Iterable, TypeVar

T = TypeVar("T")


def track(items: Iterable[T], description: str = "working", total: int | None = None) -> Iterable[T]:
    if not sys.stderr.isatty():
        yield from items
        return
    from rich.progress import track as rich_track

    yield from rich_track(items, description=description, total=total, transient=True)
