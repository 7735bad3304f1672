"""The families' wing holds: every model fact sits in its family's folder, the registry is the decorator
alone, and export/ has no import circles.

Imports are read with ``ast`` (tests/test_layering.py's reader: module level and inside functions, relative
imports resolved); each module is also imported on its own, in a fresh interpreter state for export/.
"""

from __future__ import annotations

import ast
import importlib
import sys
from pathlib import Path

import pytest

from flamingo_fixtures import mf_folder  # noqa: F401  (session fixture)
from test_layering import ROOT, imported_names, module_name

EXPORT = ROOT / "export"
FAMILIES = EXPORT / "families"


def export_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(EXPORT.rglob("*.py"))}


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the export modules it imports (``from a import b``: ``a.b`` where b is a module, else ``a``)."""
    graph = {}
    for name, path in modules.items():
        edges = set()
        for target, _ in imported_names(path.read_text(), name, path.name == "__init__.py"):
            if target in modules and target != name:
                edges.add(target)
        graph[name] = edges
    # ``from a import b`` yields both a and a.b: keep a only when b is not a submodule of it
    for name, path in modules.items():
        for target, _ in imported_names(path.read_text(), name, path.name == "__init__.py"):
            parent = target.rpartition(".")[0]
            if target in modules and parent in graph[name] and not _named_directly(path, name, parent):
                graph[name].discard(parent)
    return graph


def _named_directly(path: Path, module: str, target: str) -> bool:
    """Whether ``module`` imports ``target`` itself (``import target`` or ``from target import a_name``)."""
    names = imported_names(path.read_text(), module, path.name == "__init__.py")
    subs = {t for t, _ in names if t.rpartition(".")[0] == target}
    plain = [t for t, _ in names if t == target]
    modules = export_modules()
    return bool(plain) and (not subs or any(s not in modules for s in subs))


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import circle, each as the path that closes it (depth-first search)."""
    found, state, stack = [], {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def test_export_has_no_import_circles():
    graph = import_graph(export_modules())
    assert graph["gamma_rt.export.families.gamma.family"] >= {"gamma_rt.export.families.registry"}
    assert not cycles(graph), cycles(graph)


def test_the_cycle_finder_sees_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("module", sorted(export_modules()))
def test_each_export_module_imports_alone(module):
    saved = {k: v for k, v in sys.modules.items() if k.startswith("gamma_rt.export")}
    for k in saved:
        del sys.modules[k]
    try:
        importlib.import_module(module)
    finally:
        for k in [k for k in sys.modules if k.startswith("gamma_rt.export")]:
            del sys.modules[k]
        sys.modules.update(saved)


def test_every_family_folder_registers_itself():
    from gamma_rt.export.families import discover

    folders = {p.parent.name for p in FAMILIES.glob("*/__init__.py")}
    registered = {f.__module__.split(".")[3] for f in discover()}
    assert registered == folders
    assert {"gamma", "flamingo"} <= folders


def test_init_offers_the_registered_families(capsys):
    from gamma_rt.cli import main
    from gamma_rt.export.families import writable

    with pytest.raises(SystemExit):
        main(["init", "--help"])
    text = capsys.readouterr().out
    for family in writable():
        assert family.name in text


def test_an_option_of_another_family_is_refused_in_one_line(tmp_path, capsys):
    from gamma_rt.cli import main

    assert main(["init", "--family", "musicflamingo", "--dtype", "float16", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert "--dtype: not an option of --family musicflamingo" in err and "\n" not in err
    assert not (tmp_path / "x").exists()


def test_pyproject_installs_every_package_folder():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    listed = set(project["tool"]["setuptools"]["packages"])
    stages = ("export", "runtime", "quant", "bench")
    folders = {module_name(p) for stage in stages for p in (ROOT / stage).rglob("__init__.py")}
    assert folders <= listed, f"add to pyproject.toml's packages: {sorted(folders - listed)}"


FAMILY_FOLDERS = {p.parent.name for p in FAMILIES.glob("*/__init__.py")}


def family_of(module: str) -> str | None:
    """gamma_rt.export.families.<family>[.x] -> <family>; None for the shared modules (base, folder,
    registry) and the rest of export/."""
    parts = module.split(".")
    if len(parts) > 3 and parts[:3] == ["gamma_rt", "export", "families"] and parts[3] in FAMILY_FOLDERS:
        return parts[3]
    return None


def test_a_family_imports_no_other_familys_internals():
    modules = export_modules()
    crossings = {}
    for name, path in modules.items():
        own = family_of(name)
        for target, line in imported_names(path.read_text(), name, path.name == "__init__.py"):
            other = family_of(target)
            if other and other != own and (own or name != "gamma_rt.export.commands"):
                crossings.setdefault(name, []).append(f"{target} (line {line})")
    # gamma-rt train is GaMMA's own command, registered beside init and export
    assert not crossings, crossings


def test_generic_export_code_reads_families_through_the_registry_only():
    """The exporters, the GGUF vocabulary, the TensorRT builders: no import of a family folder."""
    modules = export_modules()
    for name in ("onnx_export", "gguf_export", "gguf_vocab", "onnx_optimize", "onnx_attention", "bundle",
                 "engines", "engine_plan", "engine_sources", "cosine_report", "calibration", "weights", "bpe"):
        module = f"gamma_rt.export.{name}"
        path = modules[module]
        found = [t for t, _ in imported_names(path.read_text(), module) if family_of(t)]
        assert not found, f"{module} imports {found}"


def test_gammas_chain_is_the_one_schema_1_bundles_meant():
    from gamma_rt.audio_chain import SCHEMA_1_CHAIN, read_chain
    from gamma_rt.export.families.gamma.family import GAMMA_CHAIN

    assert read_chain(GAMMA_CHAIN, "gamma") == SCHEMA_1_CHAIN


def _as_main_wrote_it(manifest: dict, schema: int) -> None:
    """The manifest as gamma-rt wrote it before token rules were objects (schema 2: a plain rule name)
    and before chains were recorded at all (schema 1: no chain, no token_count)."""
    manifest["audio"]["token_count"] = "proportional"
    if schema == 1:
        manifest["schema_version"] = 1
        del manifest["audio"]["chain"], manifest["audio"]["token_count"]


@pytest.mark.parametrize("schema", [1, 2])
def test_bundles_written_before_the_wing_load_and_embed_the_same(tiny_bundle, tmp_path, schema):
    import json
    import shutil

    import numpy as np

    from gamma_rt.runtime import Pipeline

    old = tmp_path / "old"
    shutil.copytree(tiny_bundle, old)
    data = json.loads((old / "manifest.json").read_text())
    assert data["audio"]["token_count"] == {"rule": "proportional"}
    _as_main_wrote_it(data, schema)
    (old / "manifest.json").write_text(json.dumps(data))
    audio = (0.1 * np.sin(np.arange(int(16000 * 41.3)) / 7)).astype(np.float32)  # one full window, one partial
    runs = []
    for bundle in (tiny_bundle, old):
        with Pipeline.open(str(bundle), threads=1) as p:
            runs.append([w.embeddings for w in p.embed(audio)])
    assert [e.shape for e in runs[0]] == [e.shape for e in runs[1]] == [(750, 64), (ceil_tokens(11.3), 64)]
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)


def ceil_tokens(seconds: float) -> int:
    import math

    return math.ceil(int(16000 * seconds) * 750 / 480000)


GENERIC = ["export/onnx_export.py", "export/gguf_export.py", "export/engines.py", "export/engine_plan.py",
           "export/engine_sources.py", "export/cosine_report.py", "export/calibration.py", "export/bundle.py",
           "runtime/trt_backend.py", "runtime/backends.py", "runtime/ort_backend.py", "runtime/embed.py",
           "bench/run.py", "bench/audio_side.py", "bench/attention_fusion.py", "gamma_rt/manifest.py"]
GAMMA_NAMES = {"temporal_encoder", "global_encoder", "fusion", "GAMMA_CHAIN", "AUDIO_COMPONENTS"}


def code_names(source: str) -> set[str]:
    """Identifiers and string constants of ``source``, docstrings left out."""
    tree = ast.parse(source)
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            names.add(node.id)
        elif isinstance(node, ast.alias):
            names.add(node.name.rpartition(".")[2])
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            names.add(node.value)
    return names


@pytest.mark.parametrize("path", GENERIC)
def test_generic_code_names_no_gamma_component(path):
    assert not code_names((ROOT / path).read_text()) & GAMMA_NAMES


def test_the_name_finder_sees_code_and_skips_docstrings():
    source = '"""temporal_encoder in a docstring."""\nx = {"fusion": 1}\nfrom a import GAMMA_CHAIN\n'
    assert code_names(source) & GAMMA_NAMES == {"fusion", "GAMMA_CHAIN"}


def test_benchs_pytorch_decoder_is_the_familys_own(tiny_checkpoint, mf_folder, tmp_path):
    """bench's transformers decoder comes from the family's DecoderSpec (what export gguf writes): it
    equals GaMMA's PyTorch model and Music Flamingo's language model as transformers loads them."""
    import torch
    from transformers import MusicFlamingoForConditionalGeneration

    from gamma_rt.bench.decoder_side import decoder_model
    from gamma_rt.export.families.gamma.checkpoint import Checkpoint

    ids = torch.tensor([[1, 5, 9, 30, 2]])
    ours = decoder_model(tiny_checkpoint, tmp_path / "g")
    reference = Checkpoint(tiny_checkpoint).model().llm.eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, reference(ids).logits, rtol=1e-5, atol=1e-5)
    ours = decoder_model(mf_folder, tmp_path / "m")
    reference = MusicFlamingoForConditionalGeneration.from_pretrained(mf_folder, dtype=torch.float32).eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, reference(input_ids=ids).logits, rtol=1e-4, atol=1e-4)
