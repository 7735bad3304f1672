"""Every TensorRT name the code uses exists in each TensorRT it runs on: 10.3 (JetPack 6), 10.13 and 11.1.

The names each release's Python module exports are data in tests/trt_api/<version>.json, parsed from
NVIDIA/TensorRT's pybind11 binding sources at that release's tag (tests/trt_api/extract.py says how; the
"source" field of each file names the commit). The code is read with ``ast``: every ``trt.X``, ``trt.X.Y``
and every method or attribute used on a TensorRT object (the variables that hold them are listed in
OBJECTS) is looked up in that data. Code that only runs on one major is listed in GATED. TrtChain must also
run on the lean runtime (``tensorrt_lean`` / ``tensorrt_dispatch``), so runtime/trt_backend.py is checked
against that module's exports too. The flag names export/engine_plan.py decides on are checked per major."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from gamma_rt.export.engine_plan import (EXCLUDE_LEAN_FLAGS, PRECISIONS, VERSION_COMPATIBLE_FLAGS, build_mode)

ROOT = Path(__file__).resolve().parents[1]
API = {p.stem: json.loads(p.read_text()) for p in (ROOT / "tests" / "trt_api").glob("*.json")}
VERSIONS = sorted(API, key=lambda v: tuple(int(x) for x in v.split(".")))
FILES = ("export/engines.py", "export/calibration.py", "runtime/trt_backend.py")
# TensorRT-typed values, by the name the code gives them (a variable, a self attribute, a dict of them)
OBJECTS = {
    "builder": "Builder", "network": "INetworkDefinition", "parser": "OnnxParser", "config": "IBuilderConfig",
    "profile": "IOptimizationProfile", "cache": "ITimingCache", "timing": "ITimingCache", "logger": "Logger",
    "runtime": "Runtime", "engine": "ICudaEngine", "engines": "ICudaEngine", "ctx": "IExecutionContext",
    "contexts": "IExecutionContext",
}
# functions that only run on some majors: (file, function) -> majors
GATED = {("export/engines.py", "_attach_calibrator"): {10}, ("export/calibration.py", "make_calibrator"): {10}}
LEAN_FILES = ("runtime/trt_backend.py",)


def _object_name(node: ast.AST) -> str | None:
    """``builder`` / ``self.engines[name]`` / ``self.contexts[name]`` -> the name OBJECTS is keyed by."""
    if isinstance(node, ast.Subscript):
        node = node.value
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
        return node.attr
    if isinstance(node, ast.Name):
        return node.id
    return None


def _is_trt(node: ast.AST) -> bool:
    return (isinstance(node, ast.Name) and node.id == "trt") or \
        (isinstance(node, ast.Attribute) and node.attr == "trt" and isinstance(node.value, ast.Name)
         and node.value.id == "self")


def uses(path: str) -> list[tuple[str, str, str, int]]:
    """(function, owner, name, line): ``owner`` "" for a module-level ``trt.name``, else the class name."""
    tree = ast.parse((ROOT / path).read_text())
    found = []

    def visit(node, function):
        for child in ast.iter_child_nodes(node):
            f = child.name if isinstance(child, (ast.FunctionDef, ast.ClassDef)) and function is None else function
            if isinstance(child, ast.Attribute):
                if _is_trt(child.value):
                    found.append((f, "", child.attr, child.lineno))
                elif isinstance(child.value, ast.Attribute) and _is_trt(child.value.value):
                    found.append((f, child.value.attr, child.attr, child.lineno))
                elif _object_name(child.value) in OBJECTS and not (isinstance(child.value, ast.Name)
                                                                    and child.value.id == "self"):
                    found.append((f, OBJECTS[_object_name(child.value)], child.attr, child.lineno))
            visit(child, f)

    visit(tree, None)
    return found


def _exists(api: dict, owner: str, name: str) -> bool:
    if not owner:
        return name in api["classes"] or name in api["functions"] or name in api["python"]
    if owner in api["python"]:  # a plain Python value of the package (``__version__.split``)
        return True
    return name in api["classes"].get(owner, ())


def _runs_on(path: str, function: str | None, version: str) -> bool:
    return int(version.split(".")[0]) in GATED.get((path, function), {10, 11})


def test_the_recorded_apis_cover_the_supported_releases():
    assert VERSIONS == ["10.3", "10.13", "11.1"]
    for v in VERSIONS:
        assert API[v]["source"]["repo"] == "github.com/NVIDIA/TensorRT" and len(API[v]["source"]["commit"]) == 40
    # the data is the real thing: TensorRT 11 removed the precision flags, weak typing and the calibrators
    assert "FP16" in API["10.3"]["tensorrt"]["classes"]["BuilderFlag"]
    assert "FP16" not in API["11.1"]["tensorrt"]["classes"]["BuilderFlag"]
    assert "IInt8EntropyCalibrator2" not in API["11.1"]["tensorrt"]["classes"]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("path", FILES)
def test_every_tensorrt_name_the_code_uses_exists_where_it_runs(path, version):
    modules = ["tensorrt", "tensorrt_lean"] if path in LEAN_FILES else ["tensorrt"]
    found = uses(path)
    assert found, f"{path}: no TensorRT use found; is the parser still reading it?"
    for module in modules:
        api = API[version][module]
        missing = [f"{path}:{line} {owner + '.' if owner else 'trt.'}{name} (in {function})"
                   for function, owner, name, line in found
                   if _runs_on(path, function, version) and not _exists(api, owner, name)]
        assert not missing, f"{module} {version} lacks: " + ", ".join(missing)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("precision", PRECISIONS)
def test_the_flags_the_plan_picks_exist_in_that_release(version, precision):
    classes = API[version]["tensorrt"]["classes"]
    mode = build_mode(precision, f"{version}.0")
    for flag in (*mode.flags, *VERSION_COMPATIBLE_FLAGS, *EXCLUDE_LEAN_FLAGS):
        assert flag in classes["BuilderFlag"], (version, precision, flag)
    for flag in mode.network_flags:
        assert flag in classes["NetworkDefinitionCreationFlag"], (version, precision, flag)
    if mode.calibrate:
        assert "IInt8EntropyCalibrator2" in classes and "int8_calibrator" in classes["IBuilderConfig"]


def test_the_checker_catches_a_name_a_release_lacks(tmp_path, monkeypatch):
    """The check itself can fail: TensorRT 10's precision flag used unconditionally is reported for 11.1."""
    bad = tmp_path / "bad.py"
    bad.write_text("def build(trt, config):\n    config.set_flag(trt.BuilderFlag.FP16)\n"
                   "    config.int8_calibrator = None\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    found = uses("bad.py")
    api = API["11.1"]["tensorrt"]
    assert [(o, n) for _, o, n, _ in found if not _exists(api, o, n)] == [("BuilderFlag", "FP16"),
                                                                           ("IBuilderConfig", "int8_calibrator")]


def test_gpu_extra_pins_tensorrt_to_the_checked_majors_and_cuda_python_with_bindings():
    import tomllib

    from packaging.requirements import Requirement

    extra = {Requirement(r).name: Requirement(r) for r in
             tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["gpu"]}
    trt = extra["tensorrt-cu12"].specifier
    assert "10.3" in trt and "11.9" in trt and "12.0" not in trt and "10.2" not in trt
    assert "12.6.0" in extra["cuda-python"].specifier and "12.5" not in extra["cuda-python"].specifier
    assert "tensorrt" not in extra  # the bare name resolves to whatever major is newest
    assert 'pip install "cuda-python==12.6.*"' in (ROOT / "docs" / "jetson.md").read_text()
