"""`gamma-rt tag` as a user meets it before any model runs: help, mistakes, import hygiene, tag writing
from journaled records."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from tag_fixtures import write_good

from gamma_rt.cli import main
from gamma_rt.runtime.journal import Journal
from gamma_rt.runtime.library import Track
from gamma_rt.runtime.prompts import PromptSet
from gamma_rt.runtime.tag_worker import bundle_hash
from gamma_rt.runtime.tagging import JOURNAL_NAME, TagOptions, write_file_tags
from gamma_rt.runtime.tagwrite import read_tags


def test_tag_help_explains_resuming_outputs_and_tag_writing(capsys):
    with pytest.raises(SystemExit) as e:
        main(["tag", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for phrase in ("LIBRARY_DIR", "--bundle", "journal.sqlite", "--write-tags", "--dry-run", "--engine"):
        assert phrase in text


def test_tag_modules_import_neither_torch_nor_transformers():
    code = ("import sys, gamma_rt.runtime.tag_commands, gamma_rt.runtime.tagging, gamma_rt.runtime.tag_ray, "
            "gamma_rt.runtime.tagwrite, gamma_rt.runtime.prompts; "
            "print([m for m in ('torch', 'transformers', 'gamma_rt.export') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("case, message", [
    ("bad_prompts", "mine.toml: prompt 'g'.schema.maxLength"),
    ("no_bundle", "bundle folder not found"),
    ("no_library", "library folder not found"),
    ("dry_run_alone", "--dry-run only applies to --write-tags"),
])
def test_user_mistakes_give_one_line_on_stderr_and_exit_2(tmp_path, capsys, case, message):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "manifest.json").write_text(json.dumps({"schema_version": 1, "audio": {}, "prompt": {},
                                                      "components": {}}))
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
        argv.append("--dry-run")
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
    opts = TagOptions(library=tmp_path / "lib", bundle=bundle, out=tmp_path / "out", prompt_set=ps)
    b_hash = bundle_hash(bundle)
    with Journal(tmp_path / "out" / JOURNAL_NAME) as j:
        j.commit({"path": track.path, "size": track.size, "mtime_ns": track.mtime_ns,
                  "content_sha256": track.content_sha256(), "duration_s": 1.0, "status": "ok", "error": None,
                  "answers": answers, "timings": {}, "bundle_hash": b_hash, "prompt_set_hash": ps.hash})
    lines: list[str] = []
    assert write_file_tags(opts, dry_run=True, report=lines.append) == 0
    assert len(lines) == 3 and read_tags(path) == {"genre": None, "mood": None, "caption": None}
    assert write_file_tags(opts, dry_run=False, report=lines.append) == 0
    assert read_tags(path) == {"genre": "Krautrock", "mood": "hypnotic; warm", "caption": "A motorik groove."}
    lines.clear()
    assert write_file_tags(opts, dry_run=False, report=lines.append) == 0 and lines == []
    with Journal(tmp_path / "out" / JOURNAL_NAME) as j:
        assert j.is_done(Track.stat(path), b_hash, ps.hash), "the tagged file is not asked again"
