"""gamma_rt/cli.py loads every command module or says which one failed and why; a handler that needs an
optional dependency names the extra to install. An edge install (no torch, no matplotlib, ...) still has
every command's --help."""

from __future__ import annotations

import subprocess
import sys

import pytest

from gamma_rt import cli

# Runs `gamma-rt ARGS` with every optional dependency of pyproject.toml unimportable, as on an edge install.
WITHOUT_EXTRAS = """
import importlib.abc, sys
from gamma_rt.cli import EXTRA_OF_MODULE, main

class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in EXTRA_OF_MODULE:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)

sys.meta_path.insert(0, Absent())
sys.exit(main(sys.argv[1:]))
"""


def run_without_extras(*argv: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", WITHOUT_EXTRAS, *argv], capture_output=True, text=True,
                          timeout=120, cwd=cwd)


def test_a_command_module_that_fails_to_import_is_named_with_its_error(tmp_path, monkeypatch, capsys):
    (tmp_path / "broken_commands.py").write_text("import gamma_rt_missing_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(cli, "COMMAND_MODULES", [*cli.COMMAND_MODULES, "broken_commands"])
    assert cli.main(["ask", "--help"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == ("gamma-rt: error: command module broken_commands does not import: "
                   "ModuleNotFoundError: No module named 'gamma_rt_missing_dependency'")


def test_every_command_module_imports_without_the_optional_dependencies():
    proc = run_without_extras("--help")
    assert proc.returncode == 0, proc.stderr
    for command in ("init", "export", "quantize", "ask", "chat", "tag", "bench", "plan", "demo", "build-engines"):
        assert command in proc.stdout
    proc = run_without_extras("export", "engines", "--help")
    assert proc.returncode == 0 and proc.stdout.startswith("usage: gamma-rt export engines"), proc.stderr


def test_a_handler_missing_an_optional_dependency_names_the_extra(tmp_path):
    proc = run_without_extras("init", "--preset", "tiny", "--out", str(tmp_path / "ckpt"), cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("gamma-rt: error: `gamma-rt init` needs torch, which is not installed: "
                                   "pip install 'gamma-rt[export]'")
    assert "Traceback" not in proc.stderr


def test_a_missing_module_of_gamma_rt_itself_is_a_bug_and_keeps_its_traceback():
    assert cli.missing_extra(ModuleNotFoundError("No module named 'gamma_rt.x'", name="gamma_rt.x"), "ask") is None
    message = cli.missing_extra(ModuleNotFoundError("No module named 'matplotlib.pyplot'", name="matplotlib.pyplot"),
                                "bench")
    assert message == "`gamma-rt bench` needs matplotlib, which is not installed: pip install 'gamma-rt[bench]'"


@pytest.mark.parametrize("module", cli.COMMAND_MODULES)
def test_command_modules_register_commands(module):
    import argparse

    sub = argparse.ArgumentParser(prog="gamma-rt").add_subparsers()
    cli.load_command_module(module).register(sub)
    assert sub.choices, f"{module} registered no command"
