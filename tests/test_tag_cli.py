"""`gamma-rt tag` as a user meets it before any model runs: help, mistakes, runtime options, import hygiene,
the package layout, tag writing from journaled records."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest
from tag_fixtures import write_good

import gamma_rt.runtime
import gamma_rt.runtime.tagging
from gamma_rt.cli import main
from gamma_rt.bundle_id import bundle_identity
from gamma_rt.runtime.options import RuntimeOptions
from gamma_rt.runtime.tagging.file_tags import read_tags
from gamma_rt.runtime.tagging.journal import Journal
from gamma_rt.runtime.tagging.library import Track
from gamma_rt.runtime.tagging.prompt_sets import PromptSet
from gamma_rt.runtime.tagging.run import JOURNAL_NAME, TagJob, write_file_tags

# The modules that were flat in runtime/ before tagging became runtime/tagging/, by their old names.
OLD_TAGGING_MODULES = {"tagging", "tag_worker", "tag_ray", "tag_commands", "tag_progress", "journal", "library",
                       "outputs", "grammar", "prompts", "tagwrite"}


def _fake_bundle(folder: Path) -> Path:
    """A bundle folder whose manifest reads, with no component: enough for everything before the model."""
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps({"schema_version": 1, "audio": {}, "prompt": {},
                                                      "components": {}}))
    return folder


def test_tag_help_explains_resuming_outputs_and_tag_writing(capsys):
    with pytest.raises(SystemExit) as e:
        main(["tag", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for phrase in ("LIBRARY_DIR", "--bundle", "journal.sqlite", "--write-tags", "--dry-run", "--engine"):
        assert phrase in text


def test_tag_help_lists_the_runtime_options_of_ask_and_chat(capsys):
    with pytest.raises(SystemExit):
        main(["tag", "--help"])
    text = capsys.readouterr().out
    for flag in ("--threads", "--precision", "--decoder", "--no-overlap", "--backend", "--gpu-layers", "--cache-dir"):
        assert flag in text
    assert "RESULTS/embedding-cache" in text, "the cache folder keeps its tag-specific default"


def test_runtime_flags_reach_every_pipeline_as_one_options_object(tmp_path, monkeypatch, tiny_bundle):
    from gamma_rt.runtime.pipeline import Pipeline

    opened = []

    def fake_open(bundle, options=None, *, verify=True, progress=None, **overrides):  # as Pipeline.open
        opened.append((options or RuntimeOptions()).replace(**overrides))
        return object()

    monkeypatch.setattr(Pipeline, "open", fake_open)
    (tmp_path / "lib").mkdir()
    argv = ["tag", str(tmp_path / "lib"), "--bundle", str(tiny_bundle),  # a manifest that reads; no model opens
            "--out", str(tmp_path / "out"), "--quiet", "--workers", "2", "--threads", "1", "--gpu-layers", "0",
            "--precision", "fp32", "--no-overlap"]
    assert main(argv) == 0
    expected = RuntimeOptions(threads=1, gpu_layers=0, precision="fp32", overlap=False,
                              cache_dir=tmp_path / "out" / "embedding-cache")
    assert opened == [expected, expected]
    assert main([*argv, "--cache-dir", str(tmp_path / "shared")]) == 0
    assert opened[-1] == expected.replace(cache_dir=tmp_path / "shared")


def test_runtime_options_cross_the_ray_boundary_as_plain_values():
    options = RuntimeOptions(threads=1, gpu_layers=0, cache_dir=Path("/cache"), decoder="decoder.f16")
    plain = options.to_dict()
    assert json.loads(json.dumps(plain)) == plain
    assert RuntimeOptions.from_dict(plain) == options


def test_runtime_root_holds_no_tagging_module_and_no_module_names_a_twin():
    root = Path(gamma_rt.runtime.__file__).parent
    assert not {p.stem for p in root.glob("*.py")} & OLD_TAGGING_MODULES
    assert not list(root.glob("*.toml")) and (root / "tagging" / "default_prompts.toml").is_file()
    names = {p.stem for p in root.rglob("*.py")}
    assert not {n for n in names if n + "s" in names}, "near-twin module names (prompt.py / prompts.py)"


def test_tag_modules_import_neither_torch_nor_transformers():
    modules = [m.name for m in pkgutil.iter_modules(gamma_rt.runtime.tagging.__path__)]
    assert {"commands", "run", "worker", "ray_actors", "file_tags", "prompt_sets"} <= set(modules)
    code = ("import importlib, sys\n"
            f"for m in {modules!r}: importlib.import_module('gamma_rt.runtime.tagging.' + m)\n"
            "print([m for m in ('torch', 'transformers', 'gamma_rt.export') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("case, message", [
    ("bad_prompts", "mine.toml: prompt 'g'.schema.maxLength"),
    ("no_bundle", "bundle folder not found"),
    ("no_library", "library folder not found"),
    ("bad_segment", "--segment 'middle:x': expected start:S, middle:S, end:S or OFFSET:S"),
])
def test_user_mistakes_give_one_line_on_stderr_and_exit_2(tmp_path, capsys, case, message):
    bundle = _fake_bundle(tmp_path / "bundle")
    (tmp_path / "lib").mkdir()
    argv = ["tag", str(tmp_path / "lib"), "--bundle", str(bundle), "--out", str(tmp_path / "out"), "--quiet"]
    if case == "bad_prompts":
        (tmp_path / "mine.toml").write_text('[[prompt]]\nname = "g"\nquestion = "q"\nschema = { type = "string" }\n')
        argv += ["--prompts", str(tmp_path / "mine.toml")]
    elif case == "no_bundle":
        argv[3] = str(tmp_path / "nope")
    elif case == "no_library":
        argv[1] = str(tmp_path / "nolib")
    else:
        argv.append("--segment=middle:x")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_write_tags_phase_writes_journaled_answers_once_and_keeps_the_track_done(tmp_path):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "manifest.json").write_text("{}")
    path = write_good(tmp_path / "lib", "rock/live/encore.flac")
    ps = PromptSet.default()
    track = Track.stat(path)
    answers = {"genre": {"genre": "Krautrock", "subgenres": []}, "mood": {"moods": ["hypnotic", "warm"]},
               "caption": {"caption": "A motorik groove."}}
    job = TagJob(library=tmp_path / "lib", bundle=bundle, out=tmp_path / "out", prompt_set=ps)
    b_hash = bundle_identity(bundle)
    with Journal(tmp_path / "out" / JOURNAL_NAME) as j:
        j.commit({"path": track.path, "size": track.size, "mtime_ns": track.mtime_ns,
                  "content_sha256": track.content_sha256(), "duration_s": 1.0, "status": "ok", "error": None,
                  "answers": answers, "timings": {}, "bundle_hash": b_hash, "prompt_set_hash": ps.hash})
    lines: list[str] = []
    assert write_file_tags(job, dry_run=True, report=lines.append) == 0
    assert len(lines) == 3 and read_tags(path) == {"genre": None, "mood": None, "caption": None}
    assert write_file_tags(job, dry_run=False, report=lines.append) == 0
    assert read_tags(path) == {"genre": "Krautrock", "mood": "hypnotic; warm", "caption": "A motorik groove."}
    lines.clear()
    assert write_file_tags(job, dry_run=False, report=lines.append) == 0 and lines == []
    with Journal(tmp_path / "out" / JOURNAL_NAME) as j:
        assert j.is_done(Track.stat(path), b_hash, ps.hash), "the tagged file is not asked again"
