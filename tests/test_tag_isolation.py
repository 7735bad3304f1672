"""One track, one name or one full disk never takes a whole `gamma-rt tag` run down: real audio files, the
real SQLite journal, a real tmpfs filled to the last byte, real signals to a real process."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from disk_fixtures import read_only_disk, small_disk  # noqa: F401  (fixtures)
from tag_fixtures import GOOD, make_library, write_good
from test_tag_run import SMALL_PROMPTS

from gamma_rt.cli import main
from gamma_rt.errors import DiskFull
from gamma_rt.runtime.embed_cache import EmbeddingCache
from gamma_rt.runtime.options import RuntimeOptions
from gamma_rt.runtime.tagging.journal import Journal
from gamma_rt.runtime.tagging.file_tags import write_tags
from gamma_rt.runtime.tagging.library import Track
from gamma_rt.runtime.tagging.prompt_sets import PromptSet
from gamma_rt.runtime.tagging.records import FORMATS, RecordFile, read_records, results_path
from gamma_rt.runtime.tagging.run import TagJob, run

# Not UTF-8 (a Latin-1 é), with an ESC that would turn a terminal red.
ODD_NAME = b"caf\xe9 \x1b[31mred.wav"


@pytest.fixture
def prompts(tmp_path) -> PromptSet:
    path = tmp_path / "small.toml"
    path.write_text(SMALL_PROMPTS)
    return PromptSet.load(path)


def _argv(lib: Path, bundle: Path, out: Path, *extra: str) -> list[str]:
    prompts = lib.parent / "argv-prompts.toml"
    prompts.write_text(SMALL_PROMPTS)
    return ["tag", str(lib), "--bundle", str(bundle), "--out", str(out), "--prompts", str(prompts), "--quiet", *extra]


def _unreadable(lib: Path) -> None:
    """A listed track that cannot be read: mode 000, or for root (who reads anything) a link to
    /proc/self/mem, whose first page no process can read (EIO)."""
    if os.geteuid() != 0:
        path = write_good(lib, "rock/intro.wav").rename(lib / "locked.wav")
        path.chmod(0)
    elif Path("/proc/self/mem").exists():
        (lib / "locked.wav").symlink_to("/proc/self/mem")
    else:
        pytest.skip("running as root without /proc: no way to make a file unreadable")


def _record(rec_path: str, n: int = 0) -> dict:
    return {"path": rec_path, "size": 1, "mtime_ns": 1, "content_sha256": f"{n:064x}", "duration_s": 1.0,
            "status": "ok", "error": None, "answers": {"genre": {"genre": "x" * 2000}}, "timings": {},
            "bundle_hash": "b" * 64, "prompt_set_hash": "p" * 64, "segment": None}


# --- an unreadable track, or one gone since the listing ----------------------------------------------------

def test_a_track_unreadable_or_deleted_after_listing_gets_a_failed_record_and_the_rest_are_tagged(
        tmp_path, tiny_bundle, prompts):
    lib = make_library(tmp_path / "lib", bad=False)
    _unreadable(lib)
    doomed = lib / "jazz/solo.mp3"
    job = TagJob(lib, tiny_bundle, tmp_path / "out", prompts)
    summary = run(job, on_start=lambda todo: doomed.unlink())  # listed, then deleted before it is read

    records = {r["path"]: r for r in read_records(tmp_path / "out" / "records.jsonl", "jsonl")}
    assert (summary.ok, summary.failed) == (len(GOOD) - 1, 2)
    gone = records.pop(str(doomed.resolve()))
    assert gone["status"] == "failed" and gone["error"].startswith("FileNotFoundError: ")
    assert "cannot read it (No such file or directory)" in gone["error"]
    (locked,) = [r for r in records.values() if r["status"] == "failed"]
    assert "cannot read it" in locked["error"] and "\n" not in locked["error"], locked["error"]

    again = run(job)  # the resume does not die at the same track: it has its record
    assert (again.todo, again.done_before) == (0, len(GOOD))


def _as_nobody(work):
    """``work()`` with the file-system rights of user nobody: setfsuid holds for the calling thread only, and
    drops root's power to read anything, so the kernel really refuses. What it imports must be imported
    before (site-packages are root's alone)."""
    import ctypes
    import threading

    if os.geteuid() != 0 or not sys.platform.startswith("linux"):
        pytest.skip("needs root on Linux to take the rights of another user for one thread")
    libc, found = ctypes.CDLL(None, use_errno=True), {}

    def as_nobody():
        libc.setfsuid(65534)
        try:
            found["result"] = work()
        except BaseException as e:  # raised again in the test's own thread
            found["error"] = e
        finally:
            libc.setfsuid(0)

    thread = threading.Thread(target=as_nobody)
    thread.start()
    thread.join()
    if "error" in found:
        raise found["error"]
    return found["result"]


def _walk_as_nobody(root: Path, unlisted=None) -> list[Track]:
    from gamma_rt.runtime.tagging.library import audio_extensions, walk

    audio_extensions()  # its imports
    return _as_nobody(lambda: list(walk(root, unlisted)))


def _open_folder() -> Path:
    """A folder every user may enter (tmp_path's parents are root's alone)."""
    import tempfile

    root = Path(tempfile.mkdtemp(dir="/tmp"))
    root.chmod(0o755)
    return root


def test_a_track_in_a_folder_that_cannot_be_searched_is_listed_to_fail_not_a_traceback():
    root = _open_folder()
    try:
        write_good(root, "rock/intro.wav")
        write_good(root, "jazz/solo.mp3")
        (root / "jazz").chmod(0o644)  # names can be read, the files cannot be looked at
        tracks = {t.path: t for t in _walk_as_nobody(root)}
    finally:
        (root / "jazz").chmod(0o755)
        shutil.rmtree(root)
    assert tracks[str(root / "rock/intro.wav")].size > 0
    assert (tracks[str(root / "jazz/solo.mp3")].size, tracks[str(root / "jazz/solo.mp3")].mtime_ns) == (-1, -1)


def test_a_folder_that_cannot_be_listed_is_named_in_one_line_and_the_rest_is_listed():
    root, unlisted = _open_folder(), []
    try:
        write_good(root, "rock/intro.wav")
        write_good(root, "jazz/solo.mp3")
        (root / "jazz").chmod(0o311)  # the files could be read, but their names cannot be listed
        tracks = [t.path for t in _walk_as_nobody(root, unlisted.append)]
    finally:
        (root / "jazz").chmod(0o755)
        shutil.rmtree(root)
    assert tracks == [str(root / "rock/intro.wav")]
    assert unlisted == [f"{root / 'jazz'}: cannot list this folder (Permission denied); its files are not tagged"]


def test_dry_run_warns_of_a_folder_it_cannot_list_on_stderr(tiny_bundle, capsys):
    root = _open_folder()
    try:
        shutil.copytree(tiny_bundle, root / "bundle")
        for path in [root / "bundle", *(root / "bundle").rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        write_good(root / "lib", "rock/intro.wav")
        write_good(root / "lib", "jazz/solo.mp3")
        argv = ["tag", str(root / "lib"), "--bundle", str(root / "bundle"), "--out", str(root / "out"), "--dry-run"]
        assert main(argv) == 0  # as root, which can list it all; and it imports what the next one needs
        assert "2 tracks: 0 done, 2 to ask" in capsys.readouterr().out
        (root / "lib" / "jazz").chmod(0o311)
        assert _as_nobody(lambda: main(argv)) == 0
    finally:
        (root / "lib" / "jazz").chmod(0o755)
        shutil.rmtree(root)
    shown = capsys.readouterr()
    assert "1 tracks: 0 done, 1 to ask" in shown.out
    assert shown.err == (f"gamma-rt: warning: {root / 'lib' / 'jazz'}: cannot list this folder (Permission denied); "
                         "its files are not tagged\n")


def test_a_changed_track_that_cannot_be_read_any_more_is_pending_not_an_exception(tmp_path):
    path = write_good(tmp_path, "rock/intro.wav")
    track = Track.stat(path)
    with Journal(tmp_path / "journal.sqlite") as journal:
        journal.commit({**_record(track.path), "size": track.size, "mtime_ns": track.mtime_ns})
        path.unlink()
        moved = Track(track.path, track.size + 1, track.mtime_ns)
        assert journal.why_pending(moved, "b" * 64, "p" * 64) == "changed"


# --- file names that are not UTF-8 -------------------------------------------------------------------------

def _odd_library(root: Path) -> tuple[Path, str]:
    """A library with one plain track and one whose name is ODD_NAME; returns (root, the odd track's path)."""
    write_good(root, "rock/intro.wav")
    plain = write_good(root, "rock/live/encore.flac")
    odd = os.path.join(os.fsencode(root), ODD_NAME)
    shutil.copyfile(plain, odd)
    return root, os.fsdecode(odd)


def test_a_name_that_is_not_utf8_is_listed_escaped_tagged_once_and_kept_exact_in_jsonl(
        tmp_path, tiny_bundle, capsys):
    lib, odd = _odd_library(tmp_path / "lib")
    argv = _argv(lib, tiny_bundle, tmp_path / "out")
    assert main([*argv, "--dry-run"]) == 0
    shown = capsys.readouterr().out
    assert "caf\\xe9 \\x1b[31mred.wav" in shown and "\x1b" not in shown, shown
    assert "3 tracks: 0 done, 3 to ask (3 new)" in shown

    assert main(argv) == 0
    text = (tmp_path / "out" / "records.jsonl").read_bytes().decode("utf-8")  # valid UTF-8, the name escaped
    assert "caf\\udce9 \\u001b[31mred.wav" in text
    records = read_records(tmp_path / "out" / "records.jsonl", "jsonl")
    assert [r["status"] for r in records] == ["ok"] * 3
    assert odd in {r["path"] for r in records}, "the record's path is the file's own name again"

    assert main([*argv, "--dry-run"]) == 0
    assert "3 tracks: 3 done, 0 to ask" in capsys.readouterr().out, "the resume matches the odd name"
    assert main(argv) == 0
    assert len(read_records(tmp_path / "out" / "records.jsonl", "jsonl")) == 3


@pytest.mark.parametrize("fmt", [f for f in FORMATS if f != "jsonl"])
def test_a_name_that_is_not_utf8_keeps_its_bytes_in_csv_and_sqlite(tmp_path, tiny_bundle, fmt):
    lib, odd = _odd_library(tmp_path / "lib")
    out = tmp_path / "out"
    assert main(_argv(lib, tiny_bundle, out, "--format", fmt)) == 0
    if fmt == "csv":
        assert os.fsencode(odd) in (out / "records.csv").read_bytes()
    else:
        with sqlite3.connect(out / "records.sqlite") as db:
            assert (os.fsencode(odd),) in db.execute("SELECT path FROM records").fetchall()
    assert odd in {r["path"] for r in read_records(results_path(out, fmt), fmt)}
    with sqlite3.connect(out / "journal.sqlite") as db:  # the journal keys the track by its bytes too
        assert (os.fsencode(odd), "ok") in db.execute("SELECT path, status FROM tracks").fetchall()


# --- a full disk -------------------------------------------------------------------------------------------

def test_a_full_disk_fails_a_journal_commit_with_disk_full_and_keeps_every_earlier_commit(small_disk):
    path = small_disk.root / "journal.sqlite"
    with Journal(path) as journal:
        for n in range(3):
            journal.commit(_record(f"/music/{n}.wav", n))
        small_disk.fill()
        with pytest.raises(DiskFull, match=r"^disk full: writing the journal .*database or disk is full\)"):
            journal.commit(_record("/music/3.wav", 3))
        small_disk.free()
        assert journal.commit(_record("/music/4.wav", 4)), "the same journal goes on once there is space"
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert [p for (p,) in db.execute("SELECT path FROM tracks ORDER BY seq")] == \
            ["/music/0.wav", "/music/1.wav", "/music/2.wav", "/music/4.wav"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_full_disk_fails_a_result_file_write_with_disk_full_and_leaves_no_temporary(small_disk, fmt):
    records = RecordFile(results_path(small_disk.root, fmt), fmt, ["genre"])
    records.rebuild([_record("/music/0.wav")])
    before = records.path.read_bytes()
    small_disk.fill()
    with pytest.raises(DiskFull, match=f"^disk full: writing {records.path}"):
        records.rebuild([_record(f"/music/{n}.wav", n) for n in range(50)])
    assert records.path.read_bytes() == before
    assert sorted(p.name for p in small_disk.root.iterdir()) == sorted([".filler", records.path.name])
    with pytest.raises(DiskFull):
        records.append(_record("/music/9.wav", 9))


def test_a_full_disk_fails_an_embedding_cache_write_with_disk_full_and_leaves_no_temporary(
        small_disk, tiny_bundle):
    cache = EmbeddingCache(small_disk.root / "cache", tiny_bundle, "fp32")
    small_disk.fill()
    with pytest.raises(DiskFull, match="^disk full: writing the embedding cache "):
        cache.put("k" * 64, np.ones((64, 1024), np.float32))
    assert list(cache.folder.iterdir()) == []


def test_a_full_disk_stops_the_run_with_one_line_and_exit_2_and_the_rerun_resumes(
        tmp_path, tiny_bundle, prompts, small_disk, capsys):
    lib = make_library(tmp_path / "lib", bad=False)
    out = small_disk.root / "out"
    job = TagJob(lib, tiny_bundle, out, prompts)
    with pytest.raises(DiskFull, match="^disk full: .*; free space and rerun to resume$"):
        run(job, on_record=lambda record: small_disk.fill())  # the disk fills after the first record
    with sqlite3.connect(out / "journal.sqlite") as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        done = db.execute("SELECT COUNT(*) FROM tracks").fetchone()[0]
    assert 1 <= done < len(GOOD)

    assert main(_argv(lib, tiny_bundle, out)) == 2  # still full: the CLI says so in one line
    err = capsys.readouterr().err
    assert err.startswith("gamma-rt: error: disk full: ") and err.endswith("; free space and rerun to resume\n")
    assert err.count("\n") == 1, err

    small_disk.free()
    summary = run(job)
    assert (summary.done_before, summary.todo, summary.ok) == (done, len(GOOD) - done, len(GOOD) - done)
    records = read_records(out / "records.jsonl", "jsonl")
    assert sorted(r["path"] for r in records) == sorted(str((lib / rel).resolve()) for rel in GOOD)


@pytest.mark.parametrize("engine", ["local", "ray"])
def test_an_embedding_cache_on_a_full_disk_stops_the_run_with_one_line_on_either_engine(
        tmp_path, tiny_bundle, prompts, small_disk, engine):
    if engine == "ray":
        ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'gamma-rt[ray]')")
        ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    lib = make_library(tmp_path / "lib", bad=False)
    job = TagJob(lib, tiny_bundle, tmp_path / "out", prompts, engine=engine,
                 runtime=RuntimeOptions(cache_dir=small_disk.root / "cache"))
    small_disk.fill()
    try:
        with pytest.raises(DiskFull) as stopped:
            run(job)
    finally:
        if engine == "ray":
            ray.shutdown()
    message = str(stopped.value)
    assert message.startswith("disk full: writing the embedding cache ") and "\n" not in message, message
    assert message.endswith("; free space and rerun to resume")
    assert read_records(tmp_path / "out" / "records.jsonl", "jsonl") == [], "no track failed for want of space"


def test_write_tags_on_a_full_disk_stops_with_one_line_leaves_the_files_as_they_were_and_resumes(
        tiny_bundle, small_disk, capsys):
    lib = small_disk.root / "lib"
    for rel in ("rock/live/encore.flac", "jazz/ballad.ogg"):
        write_good(lib, rel)
    argv = _argv(lib, tiny_bundle, small_disk.root.parent / "out")
    assert main(argv) == 0
    before = {p: p.read_bytes() for p in lib.rglob("*.*")}
    small_disk.fill()
    assert main([*argv, "--write-tags"]) == 2
    err = capsys.readouterr().err.splitlines()[-1]
    assert err.startswith("gamma-rt: error: disk full: writing tags into ") and err.endswith("free space and rerun")
    assert {p: p.read_bytes() for p in lib.rglob("*.*")} == before, "no file changed, no temporary left"
    small_disk.free()
    assert main([*argv, "--write-tags"]) == 0
    assert all(p.read_bytes() != data for p, data in before.items()), "the rerun wrote every file's tags"


def _page_sized_flac(path: Path) -> Path:
    """A FLAC of a whole number of 4 KiB pages and no padding: any tag added must grow it by a page."""
    import mutagen.flac

    write_good(path.parent, "rock/live/encore.flac").rename(path)
    tags = mutagen.flac.FLAC(path)
    tags["comment"] = "x"
    tags.save(padding=lambda info: 0)
    tags["comment"] = "x" * (1 + (-path.stat().st_size) % 4096)  # the same layout, that many bytes longer
    tags.save(padding=lambda info: 0)
    assert path.stat().st_size % 4096 == 0
    return path


def test_a_tag_save_that_runs_out_of_space_raises_the_os_error_and_leaves_the_file_as_it_was(small_disk):
    path = _page_sized_flac(small_disk.root / "song.flac")
    before = path.read_bytes()
    small_disk.fill(leave=len(before))  # room for the verified copy, and not a byte for its new tags
    with pytest.raises(OSError) as raised:  # mutagen's wrapper of it would be a traceback in the run
        write_tags(path, {"genre": "rock", "caption": "x" * 5000})
    assert raised.value.errno == errno.ENOSPC
    assert path.read_bytes() == before
    assert sorted(p.name for p in small_disk.root.iterdir() if p.is_file()) == [".filler", "song.flac"]


@pytest.mark.parametrize("where", ["a file in the way", "a read-only file system"])
def test_a_results_folder_that_cannot_be_written_is_one_line_and_exit_2(
        tmp_path, tiny_bundle, capsys, request, where):
    lib = make_library(tmp_path / "lib", bad=False)
    if where == "a file in the way":
        (tmp_path / "results").write_text("not a folder")
        out = tmp_path / "results" / "tags"
    else:
        out = request.getfixturevalue("read_only_disk").root / "tags"
    assert main(_argv(lib, tiny_bundle, out)) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"gamma-rt: error: {out}: cannot write the results folder (") and err.count("\n") == 1, err


# --- a second Ctrl-C ---------------------------------------------------------------------------------------

def test_ctrl_c_held_down_stops_at_once_with_exit_130_and_leaves_the_journal_valid_for_the_resume(
        tmp_path, tiny_bundle):
    lib = make_library(tmp_path / "lib", bad=False)
    for n in range(6):  # enough tracks that the run is still going when the signals come
        shutil.copyfile(lib / "rock/intro.wav", lib / f"more{n}.wav")
    out = tmp_path / "out"
    argv = _argv(lib, tiny_bundle, out)
    proc = subprocess.Popen([sys.executable, "-m", "gamma_rt.cli", *argv], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not _journaled(out) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    while proc.poll() is None:  # the first asks to finish the songs in flight, the second to stop now; the
        proc.send_signal(signal.SIGINT)  # rest land on the way out, which must not be cut short
        time.sleep(0.02)
    err = proc.stderr.read()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "terminate called" not in err and "gamma-rt: interrupted" in err, err
    assert "this run:" not in err, "the run ended after the first SIGINT; the second one was not tested"
    with sqlite3.connect(out / "journal.sqlite") as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        done = db.execute("SELECT COUNT(*) FROM tracks").fetchone()[0]
    assert 1 <= done < len(GOOD) + 6, "the run ended before the signals; the test proved nothing"

    assert main(argv) == 0
    records = read_records(out / "records.jsonl", "jsonl")
    assert len(records) == len({r["path"] for r in records}) == len(GOOD) + 6


def _journaled(out: Path) -> int:
    try:
        with sqlite3.connect(out / "journal.sqlite") as db:
            return db.execute("SELECT COUNT(*) FROM tracks").fetchone()[0]
    except sqlite3.OperationalError:  # not created yet
        return 0
