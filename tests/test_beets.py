"""The beets plugin `gamma` against a real beets library: a temporary BEETSDIR whose config enables the
plugin, `beet import -A -q` of a generated library, `beet gamma`, answers read back with `beet ls`, and a
run killed with SIGKILL that, run again, asks each item exactly once."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from format_fixtures import FORMATS, write_format
from test_tag_run import SMALL_PROMPTS

pytest.importorskip("beets", reason="the beets extra is not installed: pip install 'gamma-rt[beets]'")
from mediafile import MediaFile  # noqa: E402  (installed with beets)

TRACKS = ["flac.flac", "aac.m4a", "xing.mp3", "vorbis.ogg", "opus.ogg", "wavpack.wv", "alac.m4a", "wma.wma"]


def _beet_command() -> list[str]:
    beet = shutil.which("beet")
    if beet is None:
        pytest.skip("beets is installed but its `beet` command is not on PATH")
    return [beet]


@pytest.fixture
def beets_home(tmp_path, tiny_bundle):
    """BEETSDIR with the plugin enabled, and a folder of real tracks with titles in their tags."""
    music = tmp_path / "incoming"
    for i, key in enumerate(TRACKS):
        fmt = FORMATS[key]
        path = write_format(music / f"track{i}{fmt.ext}", fmt, 1.2, seed=i)
        tags = MediaFile(str(path))
        tags.title, tags.artist, tags.album = f"Song {i}", "Synth", "Generated"
        tags.save()
    home = tmp_path / "beets"
    home.mkdir()
    prompts = tmp_path / "small.toml"
    prompts.write_text(SMALL_PROMPTS)
    (home / "config.yaml").write_text(f"""
directory: {tmp_path / 'library'}
library: {home / 'library.db'}
plugins: gamma
import:
    copy: yes
    write: yes
gamma:
    bundle: {tiny_bundle}
    prompts: {prompts}
    threads: 1
    fields:
        genre: genre.genre
        comments: caption.caption
""")
    env = {**os.environ, "BEETSDIR": str(home), "PYTHONUNBUFFERED": "1"}
    subprocess.run([*_beet_command(), "import", "-A", "-q", str(music)], env=env, check=True, capture_output=True)
    return {"home": home, "env": env, "library": tmp_path / "library"}


def _beet(home, *args, check=True) -> str:
    done = subprocess.run([*_beet_command(), *args], env=home["env"], capture_output=True, text=True)
    if check and done.returncode != 0:
        raise AssertionError(f"beet {' '.join(args)} exited {done.returncode}: {done.stderr}")
    return done.stdout


def _asked(output: str) -> list[str]:
    return [line.split("gamma: asked: ", 1)[1] for line in output.splitlines() if line.startswith("gamma: asked: ")]


def test_beet_gamma_stores_answers_as_flexible_attributes_and_a_killed_run_resumes_asking_each_item_once(beets_home):
    listed = _beet(beets_home, "ls", "-f", "$path").split("\n")
    items = [p for p in listed if p]
    assert len(items) == len(TRACKS)

    proc = subprocess.Popen([*_beet_command(), "gamma"], env=beets_home["env"], stdout=subprocess.PIPE, text=True)
    first = ""
    while not first.startswith("gamma: asked: "):
        first = proc.stdout.readline()
        assert first, "beet gamma ended before asking anything"
    os.kill(proc.pid, signal.SIGKILL)
    rest, _ = proc.communicate()
    asked_before = _asked(first + rest)
    assert 1 <= len(asked_before) < len(TRACKS), "the kill came too late to test resuming"

    second = _beet(beets_home, "gamma")
    asked_after = _asked(second)
    assert not set(asked_before) & set(asked_after), "an item answered before the kill was asked again"
    assert sorted(asked_before + asked_after) == sorted(items)
    journal = beets_home["home"] / "gamma" / "journal.sqlite"
    with sqlite3.connect(journal) as db:
        assert db.execute("SELECT COUNT(*), COUNT(DISTINCT path) FROM tracks").fetchone() == (len(TRACKS),) * 2

    lines = [l for l in _beet(beets_home, "ls", "-f", "$title|$gamma_genre|$gamma_vocals").splitlines() if l]
    assert len(lines) == len(TRACKS)
    for line in lines:
        title, genre, vocals = line.split("|")
        assert title.startswith("Song ") and vocals in ("True", "False"), line
    assert "gamma: asked" not in _beet(beets_home, "gamma"), "a third run asks nothing"
    assert len(_asked(_beet(beets_home, "gamma", "-f", "title:Song 1"))) == 1


def test_apply_fills_beets_fields_and_beets_writes_them_into_the_files(beets_home):
    _beet(beets_home, "gamma", "--apply")
    rows = [l.split("|") for l in _beet(beets_home, "ls", "-f", "$path|$gamma_genre|$comments|$gamma_caption")
            .splitlines() if l]
    assert len(rows) == len(TRACKS) and any(row[1] for row in rows), "answers were stored"
    for path, gamma_genre, comments, caption in rows:
        assert comments == caption
        on_disk = MediaFile(path)
        assert (on_disk.genre or "") == gamma_genre and (on_disk.comments or "") == caption, path


def test_beet_gamma_asks_about_a_name_that_is_not_utf8_and_an_item_whose_file_is_gone_fails_alone(
        tmp_path, tiny_bundle):
    music = tmp_path / "incoming"
    odd = os.path.join(os.fsencode(music), b"caf\xe9 \x1b[31mred.aiff")  # Latin-1, with an ESC
    for i, key in enumerate(["flac.flac", "vorbis.ogg", "pcm.aiff"]):
        write_format(music / f"track{i}{FORMATS[key].ext}", FORMATS[key], 1.0, seed=i)
    os.rename(os.path.join(os.fsencode(music), b"track2.aiff"), odd)
    home = tmp_path / "beets"
    home.mkdir()
    (tmp_path / "small.toml").write_text(SMALL_PROMPTS)
    (home / "config.yaml").write_text(f"""
directory: {tmp_path / 'library'}
library: {home / 'library.db'}
plugins: gamma
import:
    copy: no
    write: no
gamma:
    bundle: {tiny_bundle}
    prompts: {tmp_path / 'small.toml'}
    threads: 1
""")
    beets = {"env": {**os.environ, "BEETSDIR": str(home), "PYTHONUNBUFFERED": "1"}}
    subprocess.run([*_beet_command(), "import", "-A", "-q", str(music)], env=beets["env"], check=True,
                   capture_output=True)
    (music / "track1.ogg").unlink()  # beets still lists it

    first = _beet(beets, "gamma")
    assert f"gamma: failed: {music / 'track1.ogg'}: cannot read it (No such file or directory)" in first
    assert sorted(_asked(first)) == sorted([str(music / "track0.flac"), f"{music}/caf\\xe9 \\x1b[31mred.aiff"])
    assert "\x1b" not in first
    again = _beet(beets, "gamma")
    assert _asked(again) == [] and again.count("gamma: already asked: ") == 2, "the odd name is matched again"
    vocals = _beet(beets, "ls", "-f", "$gamma_vocals", "path:" + os.fsdecode(odd))
    assert vocals.strip() in ("True", "False"), vocals
