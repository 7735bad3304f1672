"""The controls library owners ask a tagger for: a segment of each track, per-track timeouts scaled to
the length, a dry run that says why, counts only, and one run per results folder."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tag_fixtures import BAD, GOOD, make_library
from test_tag_run import SMALL_PROMPTS

from gamma_rt.cli import main
from gamma_rt.errors import GammaError
from gamma_rt.runtime.tagging.records import read_records
from gamma_rt.runtime.tagging.segment import Segment
from gamma_rt.runtime.tagging.worker import timeout_for


@pytest.mark.parametrize("spec, duration, span", [
    ("start:30", 200.0, (0.0, 30.0)),
    ("middle:60", 200.0, (70.0, 60.0)),
    ("end:45", 200.0, (155.0, 45.0)),
    ("90:60", 200.0, (90.0, 60.0)),
    ("190:60", 200.0, (190.0, 10.0)),
    ("middle:60", 20.0, (0.0, 20.0)),  # shorter than the segment: the whole track
])
def test_a_segment_is_that_span_of_the_track(spec, duration, span):
    assert Segment.parse(spec).span(duration) == pytest.approx(span)


@pytest.mark.parametrize("spec", ["middle:nan", "middle:inf", "inf:30", "nan:30", "middle:0", "-5:30", "x:30"])
def test_a_segment_that_is_no_span_is_refused_in_one_line(spec):
    with pytest.raises(GammaError, match="expected start:S"):
        Segment.parse(spec)


def test_the_timeout_scales_with_the_minutes_analysed_and_has_a_one_minute_floor():
    assert timeout_for(600.0, 30) == 300.0
    assert timeout_for(90.0, 30) == 45.0
    assert timeout_for(5.0, 30) == 30.0


@pytest.fixture
def job(tmp_path, tiny_bundle):
    lib = make_library(tmp_path / "lib")
    prompts = tmp_path / "small.toml"
    prompts.write_text(SMALL_PROMPTS)
    out = tmp_path / "out"
    return {"lib": lib, "out": out, "argv": ["tag", str(lib), "--bundle", str(tiny_bundle), "--out", str(out),
                                             "--prompts", str(prompts), "--quiet", "--threads", "1"]}


def test_dry_run_lists_each_track_with_why_and_writes_nothing(job, capsys):
    assert main([*job["argv"], "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.count("would ask (new): ") == len(GOOD) + len(BAD)
    assert f"{len(GOOD) + len(BAD)} tracks: 0 done, {len(GOOD) + len(BAD)} to ask" in out
    assert not job["out"].exists(), "a dry run creates nothing"
    assert main(job["argv"]) == 1
    changed = job["lib"] / "rock/intro.wav"
    changed.write_bytes(changed.read_bytes()[:-64])
    capsys.readouterr()
    assert main([*job["argv"], "--dry-run", "--retry-failed"]) == 0
    out = capsys.readouterr().out
    assert f"would ask (changed): {changed.resolve()}" in out
    assert out.count("would ask (failed): ") == len(BAD)
    assert main([*job["argv"], "--count-only", "--segment", "start:0.5"]) == 0
    out = capsys.readouterr().out
    assert "would ask" not in out and f"0 done, {len(GOOD) + len(BAD)} to ask ({len(GOOD) + len(BAD)} other prompt set)" in out


def test_segment_records_say_which_span_was_asked_and_are_kept_apart_from_whole_tracks(job, capsys):
    assert main([*job["argv"], "--segment", "middle:0.5"]) == 1
    records = {r["path"]: r for r in read_records(job["out"] / "records.jsonl", "jsonl")}
    intro = records[str((job["lib"] / "rock/intro.wav").resolve())]  # 1.5 s long
    assert intro["status"] == "ok" and intro["segment"] == {"start_s": 0.5, "seconds": 0.5}
    assert intro["duration_s"] == pytest.approx(1.5) and intro["prompt_set_hash"].endswith("@middle:0.5")
    capsys.readouterr()
    assert main(job["argv"]) == 1
    assert f"of {len(GOOD) + len(BAD)} to do (0 already done)" in capsys.readouterr().err


def test_a_track_past_its_timeout_gets_a_failed_record_saying_so_and_the_run_goes_on(job):
    assert main([*job["argv"], "--timeout-per-minute", "0.0001"]) == 1
    records = read_records(job["out"] / "records.jsonl", "jsonl")
    assert len(records) == len(GOOD) + len(BAD)
    good = [r for r in records if Path(r["path"]).relative_to(job["lib"].resolve()).as_posix() in GOOD]
    assert all(r["status"] == "failed" and "timed out" in r["error"] and "s per minute" in r["error"] for r in good)


HOLD = """
import sys, time
from gamma_rt.runtime.tagging.run_lock import RunLock
with RunLock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def _holder(out: Path, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(out), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_run_on_the_same_results_names_the_pid_holding_it_and_exits(job, capsys):
    holder = _holder(job["out"], 30)
    try:
        assert main(job["argv"]) == 2
        err = capsys.readouterr().err
        assert f"another gamma-rt tag run (pid {holder.pid}) holds this results folder" in err
        assert err.count("\n") == 1
        assert not (job["out"] / "journal.sqlite").exists()
    finally:
        holder.kill()
        holder.wait()
    assert main(job["argv"]) == 1, "a killed holder leaves no stale lock"


def test_wait_starts_when_the_other_run_finishes(job, capsys):
    holder = _holder(job["out"], 1.5)
    t0 = time.perf_counter()
    assert main([*job["argv"], "--wait"]) == 1
    assert time.perf_counter() - t0 >= 1.0
    assert f"waiting for the run with pid {holder.pid}" in capsys.readouterr().err
    holder.wait()
    assert len((job["out"] / "records.jsonl").read_text().splitlines()) == len(GOOD) + len(BAD)
