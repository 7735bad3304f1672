"""`gamma-rt tag` end to end on a generated library, with a real tiny bundle (ONNX Runtime + llama.cpp)."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tag_fixtures import BAD, GOOD, make_library

from gamma_rt.cli import main
from gamma_rt.runtime.tagging.prompt_sets import PromptSet
from gamma_rt.runtime.tagging.records import read_records
from gamma_rt.runtime.tagging.schema_grammar import schema_violation

# Short answers keep the tests fast; the default set is exercised once below.
SMALL_PROMPTS = """\
name = "small"
[[prompt]]
name = "genre"
question = "What is the genre?"
tag = "genre"
tag_key = "genre"
schema = { type = "object", properties = { genre = { type = "string", maxLength = 6 } } }
[[prompt]]
name = "vocals"
question = "Are there vocals?"
schema = { type = "object", properties = { vocals = { type = "boolean" } } }
[[prompt]]
name = "caption"
question = "Describe it in one line."
tag = "caption"
tag_key = "caption"
schema = { type = "object", properties = { caption = { type = "string", maxLength = 8 } } }
"""


@pytest.fixture
def bundle(tiny_bundle) -> Path:
    """The session's tiny bundle (fp32 ONNX audio graphs + F32 GGUF decoder); the tag job only reads it."""
    return tiny_bundle


@pytest.fixture
def job(tmp_path, bundle):
    lib = make_library(tmp_path / "lib")
    prompts = tmp_path / "small.toml"
    prompts.write_text(SMALL_PROMPTS)
    return {"lib": lib, "out": tmp_path / "out", "prompts": prompts, "bundle": bundle,
            "argv": ["tag", str(lib), "--bundle", str(bundle), "--out", str(tmp_path / "out"),
                     "--prompts", str(prompts), "--quiet"]}


def _check_records(records: list[dict], lib: Path, prompt_set: PromptSet) -> None:
    by_path = {}
    for r in records:
        assert r["path"] not in by_path, f"duplicate record for {r['path']}"
        by_path[r["path"]] = r
    assert set(by_path) == {str((lib / rel).resolve()) for rel in [*GOOD, *BAD]}
    for rel in GOOD:
        r = by_path[str((lib / rel).resolve())]
        assert r["status"] == "ok", r["error"]
        assert r["duration_s"] == pytest.approx(GOOD[rel][2], abs=0.1)
        assert r["prompt_set_hash"] == prompt_set.hash and len(r["bundle_hash"]) == 64
        for p in prompt_set.prompts:
            assert schema_violation(r["answers"][p.name], p.schema, p.name) is None
    for rel in BAD:
        r = by_path[str((lib / rel).resolve())]
        assert r["status"] == "failed" and r["error"] and r["answers"] == {}


def test_every_good_file_gets_one_parsing_record_bad_files_an_error_record_and_exit_code_says_failed(job):
    assert main(job["argv"]) == 1  # three bad files
    ps = PromptSet.load(job["prompts"])
    _check_records(read_records(job["out"] / "records.jsonl", "jsonl"), job["lib"], ps)
    assert main(job["argv"]) == 1, "a re-run asks nothing and still reports the failures"
    _check_records(read_records(job["out"] / "records.jsonl", "jsonl"), job["lib"], ps)


def test_library_of_only_good_files_exits_zero_with_csv_and_sqlite_outputs(tmp_path, bundle):
    lib = make_library(tmp_path / "lib", bad=False)
    for fmt in ("csv", "sqlite"):
        argv = ["tag", str(lib), "--bundle", str(bundle), "--out", str(tmp_path / fmt), "--format", fmt,
                "--quiet", "--prompts", str(tmp_path / "p.toml")]
        (tmp_path / "p.toml").write_text(SMALL_PROMPTS)
        assert main(argv) == 0
        rows = read_records(tmp_path / fmt / f"records.{fmt}", fmt)
        assert len(rows) == len(GOOD) and {r["status"] for r in rows} == {"ok"}
        assert all(json.loads(r["answer_genre" if fmt == "sqlite" else "genre"])["genre"] is not None for r in rows)


def test_default_prompt_set_answers_all_parse(tmp_path, bundle):
    lib = tmp_path / "lib"
    from tag_fixtures import write_good

    write_good(lib, "rock/intro.wav")
    assert main(["tag", str(lib), "--bundle", str(bundle), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    (record,) = read_records(tmp_path / "out" / "records.jsonl", "jsonl")
    for p in PromptSet.default().prompts:
        assert schema_violation(record["answers"][p.name], p.schema, p.name) is None


def _spawn(argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "gamma_rt.cli", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _journaled(out: Path) -> int:
    try:
        db = sqlite3.connect(out / "journal.sqlite")
        return db.execute("SELECT COUNT(*) FROM tracks").fetchone()[0]
    except sqlite3.OperationalError:  # not created yet
        return 0


def _wait_for_first_record(proc: subprocess.Popen, out: Path, timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        n = _journaled(out)
        if n:
            return n
        time.sleep(0.02)
    raise AssertionError(f"no record journaled (exit {proc.poll()}): {proc.stderr.read() if proc.poll() else ''}")


def test_kill_9_after_the_first_record_then_resume_gives_exactly_one_record_per_file(job):
    proc = _spawn(job["argv"] + ["--in-flight", "2"])  # two songs at once, and tracks not yet started
    _wait_for_first_record(proc, job["out"])
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = _journaled(job["out"])
    assert done < len(GOOD) + len(BAD), "killed after the whole run; the test proved nothing"
    assert main(job["argv"]) == 1
    _check_records(read_records(job["out"] / "records.jsonl", "jsonl"), job["lib"], PromptSet.load(job["prompts"]))


def test_sigint_finishes_the_current_track_and_exits_cleanly(job):
    proc = _spawn(job["argv"] + ["--in-flight", "2"])  # the two in flight finish, the rest are not started
    _wait_for_first_record(proc, job["out"])
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted" in err
    journaled = _journaled(job["out"])
    records = read_records(job["out"] / "records.jsonl", "jsonl")
    assert len(records) == journaled < len(GOOD) + len(BAD)
    assert main(job["argv"]) == 1
    _check_records(read_records(job["out"] / "records.jsonl", "jsonl"), job["lib"], PromptSet.load(job["prompts"]))


def test_write_tags_dry_run_changes_nothing_then_write_tags_round_trips(job, capsys):
    from gamma_rt.runtime.tagging.file_tags import read_tags

    good = [job["lib"] / rel for rel in GOOD]
    assert main(job["argv"]) == 1  # the records first; --dry-run asks nothing
    before = {p: p.read_bytes() for p in good}
    assert main([*job["argv"], "--write-tags", "--dry-run"]) == 0
    assert "(dry run)" in capsys.readouterr().out
    assert all(p.read_bytes() == before[p] for p in good)
    assert main([*job["argv"], "--write-tags"]) == 1
    records = {r["path"]: r for r in read_records(job["out"] / "records.jsonl", "jsonl")}
    for p in good:
        answers = records[str(p.resolve())]["answers"]
        tags = read_tags(p)
        assert tags["genre"] == (answers["genre"]["genre"] or None)
        assert tags["caption"] == (answers["caption"]["caption"] or None)
    capsys.readouterr()
    assert main(job["argv"]) == 1
    assert "0 ok, 0 failed of 0 to do" in capsys.readouterr().err, "tagged files are not asked again"


def _cache_files(out: Path) -> set[Path]:
    return set((out / "embedding-cache").rglob("*.npy"))


def test_new_prompt_set_asks_again_but_reuses_every_cached_audio_embedding(job):
    assert main(job["argv"]) == 1
    cached = _cache_files(job["out"])
    assert cached, "the first run cached no embeddings"
    first = {r["path"]: r for r in read_records(job["out"] / "records.jsonl", "jsonl")}
    assert all(r["timings"]["cached_windows"] == 0 and r["timings"]["front_end_ms"] > 0
               for r in first.values() if r["status"] == "ok")
    other = job["prompts"].parent / "other.toml"
    other.write_text(SMALL_PROMPTS.replace('name = "small"', 'name = "other"')
                     .replace("What is the genre?", "Which genre is it?"))
    assert PromptSet.load(other).hash != PromptSet.load(job["prompts"]).hash
    argv = [a if a != str(job["prompts"]) else str(other) for a in job["argv"]]
    assert main(argv) == 1
    assert _cache_files(job["out"]) == cached, "the re-run encoded audio again"
    second = read_records(job["out"] / "records.jsonl", "jsonl")
    assert {r["path"] for r in second} == set(first), "every track is asked the new prompt set"
    for r in second:
        if r["status"] == "ok":
            assert r["timings"]["cached_windows"] >= 1, r["timings"]
            assert not {"front_end_ms", "temporal_encoder_ms"} & set(r["timings"]), "encoders ran again"
    _check_records(second, job["lib"], PromptSet.load(other))


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray is not installed (pip install 'gamma-rt[ray]')")
def test_ray_engine_with_two_workers_merges_each_record_exactly_once(job):
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        assert main([*job["argv"], "--engine", "ray", "--workers", "2"]) == 1
    finally:
        ray.shutdown()
    records = read_records(job["out"] / "records.jsonl", "jsonl")
    _check_records(records, job["lib"], PromptSet.load(job["prompts"]))
    assert len({r["timings"]["worker"] for r in records if r["status"] == "ok"}) == 2
