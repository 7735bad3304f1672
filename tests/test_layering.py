"""Stages import one way (README, "Layout"): every import in runtime/, export/, quant/ and bench/, read with
``ast``, wherever it sits (module level or inside a function), relative imports resolved.

- runtime/ imports no other stage, and never torch or transformers (an edge install has neither);
- export/ and quant/ do not import each other, nor bench/ (bench observes them, not the other way round).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("runtime", "export", "quant", "bench")  # folder == gamma_rt.<folder>
FORBIDDEN = {
    "runtime": ("gamma_rt.export", "gamma_rt.quant", "gamma_rt.bench", "torch", "transformers"),
    "export": ("gamma_rt.quant", "gamma_rt.bench"),
    "quant": ("gamma_rt.export", "gamma_rt.bench"),
    "bench": (),
}


def module_name(path: Path) -> str:
    """runtime/tagging/run.py -> gamma_rt.runtime.tagging.run; runtime/__init__.py -> gamma_rt.runtime."""
    parts = ["gamma_rt", *path.relative_to(ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(source: str, module: str, is_package: bool = False) -> list[tuple[str, int]]:
    """(absolute module name, line) of every import in ``source``; ``from a import b`` gives both ``a`` and
    ``a.b`` (b may be a submodule). ``importlib.import_module("x")`` and ``__import__("x")`` with a literal count."""
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            found += [(base, node.lineno)] if node.module else []
            found += [(f"{base}.{alias.name}", node.lineno) for alias in node.names]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str) and _called(node) in ("import_module", "__import__"):
            found.append((node.args[0].value, node.lineno))
    return found


def _called(call: ast.Call) -> str:
    f = call.func
    return f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""


def violations(stage: str, source: str, module: str, is_package: bool = False) -> list[str]:
    """``module``'s imports that ``stage`` must not make, as "name (line N)"."""
    bad = FORBIDDEN[stage]
    return [f"{name} (line {line})" for name, line in imported_names(source, module, is_package)
            if any(name == b or name.startswith(b + ".") for b in bad)]


def stage_files(stage: str) -> list[Path]:
    return sorted((ROOT / stage).rglob("*.py"))


@pytest.mark.parametrize("stage", STAGES)
def test_each_stage_imports_only_what_its_layer_allows(stage):
    files = stage_files(stage)
    assert files, f"no .py files under {stage}/"
    found = {}
    for path in files:
        bad = violations(stage, path.read_text(), module_name(path), path.name == "__init__.py")
        if bad:
            found[str(path.relative_to(ROOT))] = bad
    assert not found, f"{stage}/ imports across the layering: {found}"


def test_the_detector_finds_violations_wherever_they_hide():
    source = '''
import numpy
from gamma_rt.manifest import Manifest

def handler():
    import torch.nn
    from ..export import config
    from gamma_rt import bench
    importlib.import_module("gamma_rt.quant.fidelity")
'''
    bad = violations("runtime", source, "gamma_rt.runtime.commands")
    assert bad == ["torch.nn (line 6)", "gamma_rt.export (line 7)", "gamma_rt.export.config (line 7)",
                   "gamma_rt.bench (line 8)", "gamma_rt.quant.fidelity (line 9)"]
    # the same relative import is fine one level down in a subpackage of runtime, and caught two levels up
    assert violations("runtime", "from ..embed_cache import x", "gamma_rt.runtime.tagging.run") == []
    assert violations("runtime", "from ...export import x", "gamma_rt.runtime.tagging.run") == \
        ["gamma_rt.export (line 1)", "gamma_rt.export.x (line 1)"]
    assert violations("quant", "from gamma_rt.bench.machine import describe", "gamma_rt.quant.fidelity") == \
        ["gamma_rt.bench.machine (line 1)", "gamma_rt.bench.machine.describe (line 1)"]
    assert violations("export", "from . import engines", "gamma_rt.export", is_package=True) == []
    assert violations("bench", "import torch\nfrom gamma_rt.export import model", "gamma_rt.bench.run") == []


def test_module_names_follow_the_package_map():
    assert module_name(ROOT / "runtime" / "tagging" / "run.py") == "gamma_rt.runtime.tagging.run"
    assert module_name(ROOT / "export" / "__init__.py") == "gamma_rt.export"
