"""How a ``python -m gamma_rt.bench.<name>`` module ends: its command line recorded, a user's mistake (a
GammaError) printed as one line on stderr and returned as the exit code, its result written whole."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Callable

from gamma_rt.errors import GammaError
from gamma_rt.terminal import printable


def run_module(name: str, argv: list[str] | None, job: Callable[[str], object]) -> int:
    """Call ``job(command)``, ``command`` being the line that ran it; 0, or the GammaError's exit code."""
    command = f"python -m gamma_rt.bench.{name} " + " ".join(sys.argv[1:] if argv is None else argv)
    try:
        job(command)
    except GammaError as e:
        print(f"{name}: error: {printable(e)}", file=sys.stderr)
        return e.exit_code
    return 0


def write_json(path: Path, result: dict) -> Path:
    """Write ``result`` as indented JSON to ``path``, whole or not at all (a temporary file, then a rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(path)
    return path
