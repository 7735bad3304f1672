"""Regenerate tests/trt_api/<version>.json from NVIDIA/TensorRT's Python binding sources (not run by pytest).

    python tests/trt_api/extract.py /path/to/NVIDIA-TensorRT.git v10.3.0 10.3
    python tests/trt_api/extract.py /path/to/NVIDIA-TensorRT.git v10.13.0 10.13
    python tests/trt_api/extract.py /path/to/NVIDIA-TensorRT.git v11.1 11.1

The bindings declare every Python name with pybind11: ``py::class_<C++ type, base...>(m, "Name")`` and
``py::enum_<...>(m, "Name")``, then ``.def("method")``, ``.def_property*("attr")``, ``.def_readwrite("attr")``
and ``.value("MEMBER")``. Members of a bound C++ base class are inherited. ``tensorrt`` is built from every
file under python/src with EXPORT_ALL_BINDINGS; ``tensorrt_lean`` and ``tensorrt_dispatch`` from
pyTensorRT.cpp, utils.cpp, infer/pyCore.cpp, infer/pyPlugin.cpp and infer/pyFoundationalTypes.cpp without it
(python/CMakeLists.txt). Code under ENABLE_INETWORK_SERIALIZE is left out (not in the released wheels'
guaranteed surface). The pure-Python names of the package's __init__.py (``__version__``, ``nptype``...) are
added from python/packaging/bindings_wheel/tensorrt/__init__.py.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys

LEAN_FILES = ("python/src/pyTensorRT.cpp", "python/src/utils.cpp", "python/src/infer/pyCore.cpp",
              "python/src/infer/pyPlugin.cpp", "python/src/infer/pyFoundationalTypes.cpp")
MEMBER = re.compile(r'\.(def|def_property|def_property_readonly|def_readwrite|def_readonly|def_static|'
                    r'def_property_static|value)\(\s*"(\w+)"')
BINDING = re.compile(r'py::(class_|enum_)<')


def git_show(repo: str, ref: str, path: str) -> str:
    return subprocess.run(["git", "-C", repo, "show", f"{ref}:{path}"], capture_output=True, text=True,
                          check=True).stdout


def strip_conditionals(text: str, full: bool) -> str:
    """Drop the lines a build leaves out: EXPORT_ALL_BINDINGS blocks for the lean module, ENABLE_INETWORK_SERIALIZE."""
    out, stack = [], []  # stack of "keep this branch?" per open #if
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("#if"):
            keep = (full if "EXPORT_ALL_BINDINGS" in s else False if "ENABLE_INETWORK_SERIALIZE" in s else True)
            stack.append([keep, "EXPORT_ALL_BINDINGS" in s or "ENABLE_INETWORK_SERIALIZE" in s])
            continue
        if s.startswith("#else") and stack:
            if stack[-1][1]:
                stack[-1][0] = not stack[-1][0]
            continue
        if s.startswith("#endif") and stack:
            stack.pop()
            continue
        if s.startswith("#elif"):
            continue
        if all(k for k, _ in stack):
            out.append(line)
    return "\n".join(out)


def _strip_comments_and_strings(text: str) -> str:
    text = re.sub(r"//[^\n]*", "", text)
    return re.sub(r"/\*.*?\*/", "", text, flags=re.S)


def _template_args(text: str, start: int) -> tuple[list[str], int]:
    depth, i, arg, args = 1, start, "", []
    while depth:
        c = text[i]
        if c == "<":
            depth += 1
        elif c == ">":
            depth -= 1
            if not depth:
                break
        if c == "," and depth == 1:
            args.append(arg.strip())
            arg = ""
        else:
            arg += c
        i += 1
    args.append(arg.strip())
    return args, i + 1


def _statement_end(text: str, i: int) -> int:
    depth, in_str = 0, False
    while i < len(text):
        c = text[i]
        if in_str:
            if c == "\\":
                i += 1
            elif c == '"':
                in_str = False
        elif c == '"':
            in_str = True
        elif c in "({[":
            depth += 1
        elif c in ")}]":
            depth -= 1
        elif c == ";" and depth <= 0:
            return i
        i += 1
    return i


def _top_level_members(stmt: str, depth: int = 0) -> list[str]:
    """Names bound by this statement's own chained calls (not those inside lambdas' bodies); ``depth``: brackets
    already open where ``stmt`` starts."""
    names, in_str, i = [], False, 0
    while i < len(stmt):
        c = stmt[i]
        if in_str:
            if c == "\\":
                i += 1
            elif c == '"':
                in_str = False
        elif c == '"':
            in_str = True
        elif c in "({[":
            depth += 1
        elif c in ")}]":
            depth -= 1
        elif c == "." and depth == 0:
            m = MEMBER.match(stmt, i)
            if m:
                names.append(m.group(2))
        i += 1
    return names


def bindings(sources: list[str]) -> dict:
    """{python name: {"kind": "class"|"enum", "cpp": type, "bases": [...], "members": [...]}}, plus module functions."""
    classes, variables, functions = {}, {}, []
    for raw in sources:
        text = _strip_comments_and_strings(raw)
        for m in BINDING.finditer(text):
            args, after = _template_args(text, m.end())
            head = re.match(r'\s*(\w+)?\s*[({]\s*(\w+)\s*,\s*"(\w+)"', text[after:])
            if not head:
                continue
            var, scope, name = head.group(1), head.group(2), head.group(3)
            end = _statement_end(text, after)
            stmt = text[after + head.end():end]
            entry = classes.setdefault(name, {"kind": "class" if m.group(1) == "class_" else "enum",
                                              "cpp": args[0], "bases": args[1:], "members": []})
            entry["members"] += _top_level_members(stmt, depth=1)
            if scope in variables:  # nested in a class (ILogger.Severity); export_values() lifts the members
                parent = classes[variables[scope]]["members"]
                parent.append(name)
                if "export_values" in stmt:
                    parent += _top_level_members(stmt, depth=1)
            if var:
                variables[var] = name
        for var, name in variables.items():
            for m in re.finditer(rf"\b{var}\s*\.", text):
                end = _statement_end(text, m.start())
                classes[name]["members"] += _top_level_members(text[m.start() + len(var):end])
        functions += re.findall(r'\bm\.def\(\s*"(\w+)"', text)
    by_cpp = {v["cpp"]: k for k, v in classes.items()}
    resolved = {}

    def members(name: str, seen=()) -> set[str]:
        entry = classes[name]
        out = set(entry["members"])
        for base in entry["bases"]:
            if base in by_cpp and by_cpp[base] not in seen:
                out |= members(by_cpp[base], (*seen, name))
        return out

    for name, entry in classes.items():
        resolved[name] = sorted(members(name) - {"__init__"})
    return {"classes": resolved, "enums": sorted(k for k, v in classes.items() if v["kind"] == "enum"),
            "functions": sorted(set(functions))}


def python_names(init_py: str) -> list[str]:
    tree = ast.parse(re.sub(r"##(\w+)##", lambda m: "tensorrt" if m.group(1) == "TENSORRT_MODULE" else "0", init_py))
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return sorted(n for n in names if n == "__version__" or not n.startswith("_"))


def extract(repo: str, ref: str) -> dict:
    files = subprocess.run(["git", "-C", repo, "ls-tree", "-r", "--name-only", ref, "python/src"],
                           capture_output=True, text=True, check=True).stdout.split()
    cpp = [f for f in files if f.endswith(".cpp")]
    full = bindings([strip_conditionals(git_show(repo, ref, f), full=True) for f in cpp])
    lean = bindings([strip_conditionals(git_show(repo, ref, f), full=False) for f in cpp if f in LEAN_FILES])
    init = python_names(git_show(repo, ref, "python/packaging/bindings_wheel/tensorrt/__init__.py"))
    commit = subprocess.run(["git", "-C", repo, "rev-parse", ref], capture_output=True, text=True,
                            check=True).stdout.strip()
    return {"tensorrt": {**full, "python": init}, "tensorrt_lean": {**lean, "python": init},
            "source": {"repo": "github.com/NVIDIA/TensorRT", "ref": ref, "commit": commit,
                       "files": cpp + ["python/packaging/bindings_wheel/tensorrt/__init__.py"],
                       "how": "tests/trt_api/extract.py: pybind11 declarations parsed from the binding sources"}}


if __name__ == "__main__":
    repo, ref, version = sys.argv[1:4]
    data = {"version": version, **extract(repo, ref)}
    with open(f"{__file__.rsplit('/', 1)[0]}/{version}.json", "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.write("\n")
