"""The tagging journal: one SQLite (WAL) row per track, the source of truth of a tagging run.

A row is keyed by (path, bundle hash, prompt-set hash) and remembers the file's size, mtime and content
hash, so a changed file is asked again and an unchanged one never is. The output record is stored *in the
same row, in the same transaction* that marks the track done; output files are derived from the journal
(see records.py). So a SIGKILL at any point leaves either the whole record or none of it, and a re-run
neither loses nor duplicates a track.

A path that is not valid UTF-8 is keyed by its bytes (names.py). A full disk raises DiskFull, with the
transaction rolled back: the journal holds every commit before it, and the next run resumes from there.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Callable, Iterator

from gamma_rt.errors import stop_on_full_disk

from .library import Track
from .names import sql_text

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tracks (
    path TEXT NOT NULL,
    bundle_hash TEXT NOT NULL,
    prompt_set_hash TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    content_sha256 TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('ok', 'failed')),
    record TEXT NOT NULL,
    tags_written INTEGER NOT NULL DEFAULT 0,
    seq INTEGER NOT NULL,
    PRIMARY KEY (path, bundle_hash, prompt_set_hash)
);
CREATE INDEX IF NOT EXISTS tracks_by_job ON tracks (bundle_hash, prompt_set_hash, seq);
"""


class Journal:
    """Open with ``Journal(path)``; use as a context manager. Only one process should write at a time
    (the driver); readers may look on while it runs, WAL lets them."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.writing = f"writing the journal {self.path}"
        with stop_on_full_disk(self.writing):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(self.path, isolation_level=None)  # explicit transactions below
            self.db.execute("PRAGMA journal_mode=WAL")
            # FULL: a commit survives power loss too, not only a killed process; one fsync per track is cheap.
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.executescript(_SCHEMA)

    def __enter__(self) -> "Journal":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.db.close()

    def is_done(self, track: Track, bundle_hash: str, prompt_set_hash: str, retry_failed: bool = False,
                content_sha256: Callable[[], str] | None = None) -> bool:
        """Whether ``track`` already has a record for this bundle and prompt set.

        Same size and mtime: done. Otherwise the content hash decides (a touched but unchanged file stays
        done, and its row learns the new size/mtime)."""
        return self.why_pending(track, bundle_hash, prompt_set_hash, retry_failed, content_sha256) is None

    def why_pending(self, track: Track, bundle_hash: str, prompt_set_hash: str, retry_failed: bool = False,
                    content_sha256: Callable[[], str] | None = None, refresh: bool = True) -> str | None:
        """None when ``track`` has its record for this bundle and prompt set, else why it is to be asked:
        new | changed | failed | other bundle | other prompt set. ``refresh=False`` writes nothing (a touched
        but unchanged file keeps its old size/mtime in the journal: a dry run)."""
        path = sql_text(track.path)
        row = self.db.execute(
            "SELECT size, mtime_ns, content_sha256, status FROM tracks "
            "WHERE path=? AND bundle_hash=? AND prompt_set_hash=?", (path, bundle_hash, prompt_set_hash),
        ).fetchone()
        if row is None:
            bundles = {b for (b,) in self.db.execute("SELECT bundle_hash FROM tracks WHERE path=?", (path,))}
            if not bundles:
                return "new"
            return "other prompt set" if bundle_hash in bundles else "other bundle"
        if retry_failed and row[3] == "failed":
            return "failed"
        if (row[0], row[1]) == (track.size, track.mtime_ns):
            return None
        try:
            digest = (content_sha256 or track.content_sha256)()
        except OSError:  # unreadable or gone since it was listed: asking again records why, in its own record
            return "changed"
        if digest != row[2]:
            return "changed"
        if refresh:
            with stop_on_full_disk(self.writing):
                self.db.execute(
                    "UPDATE tracks SET size=?, mtime_ns=? WHERE path=? AND bundle_hash=? AND prompt_set_hash=?",
                    (track.size, track.mtime_ns, path, bundle_hash, prompt_set_hash),
                )
        return None

    def record(self, path: str, bundle_hash: str, prompt_set_hash: str) -> dict | None:
        """The record of one track for this bundle and prompt set, or None."""
        row = self.db.execute("SELECT record FROM tracks WHERE path=? AND bundle_hash=? AND prompt_set_hash=?",
                              (sql_text(path), bundle_hash, prompt_set_hash)).fetchone()
        return json.loads(row[0]) if row else None

    def commit(self, record: dict, replace: bool = False) -> bool:
        """Store one finished track's record atomically; replaces an older record of the same key.

        Returns False, storing nothing, when a record of the same file content is already there (unless it
        failed and this one is ok, or ``replace``: a forced re-ask): a retried Ray task or a re-delivered
        result is merged once."""
        key = (sql_text(record["path"]), record["bundle_hash"], record["prompt_set_hash"])
        with stop_on_full_disk(self.writing):
            return self._commit(key, record, replace)

    def _commit(self, key: tuple, record: dict, replace: bool) -> bool:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            row = self.db.execute(
                "SELECT content_sha256, status FROM tracks WHERE path=? AND bundle_hash=? AND prompt_set_hash=?", key
            ).fetchone()
            better = replace or (row and row[1] == "failed" and record["status"] == "ok")
            if row and row[0] == record["content_sha256"] and not better:
                self.db.execute("ROLLBACK")
                return False
            seq = self.db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM tracks").fetchone()[0]
            self.db.execute(
                "INSERT OR REPLACE INTO tracks (path, bundle_hash, prompt_set_hash, size, mtime_ns, content_sha256,"
                " status, record, tags_written, seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, ?)",
                (*key, record["size"], record["mtime_ns"], record["content_sha256"], record["status"],
                 json.dumps(record), seq),
            )
            self.db.execute("COMMIT")
        except BaseException:
            # SQLite has rolled back already after SQLITE_FULL (and a second Ctrl-C may land after COMMIT):
            # a ROLLBACK then would only hide the real error behind "no transaction is active"
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            raise
        return True

    def records(self, bundle_hash: str, prompt_set_hash: str, status: str | None = None) -> Iterator[dict]:
        """Records of one job (bundle + prompt set), in the order they were committed."""
        sql = "SELECT record FROM tracks WHERE bundle_hash=? AND prompt_set_hash=?"
        args: tuple = (bundle_hash, prompt_set_hash)
        if status:
            sql, args = sql + " AND status=?", args + (status,)
        for (text,) in self.db.execute(sql + " ORDER BY seq", args).fetchall():
            yield json.loads(text)

    def counts(self, bundle_hash: str, prompt_set_hash: str) -> dict[str, int]:
        rows = self.db.execute(
            "SELECT status, COUNT(*) FROM tracks WHERE bundle_hash=? AND prompt_set_hash=? GROUP BY status",
            (bundle_hash, prompt_set_hash),
        ).fetchall()
        return {"ok": 0, "failed": 0, **dict(rows)}

    def untagged(self, bundle_hash: str, prompt_set_hash: str) -> Iterator[dict]:
        """ok records whose answers have not been written into the file's tags yet."""
        for (text,) in self.db.execute(
            "SELECT record FROM tracks WHERE bundle_hash=? AND prompt_set_hash=? AND status='ok' "
            "AND tags_written=0 ORDER BY seq", (bundle_hash, prompt_set_hash),
        ).fetchall():
            yield json.loads(text)

    def mark_tags_written(self, record: dict, track: Track, content_sha256: str) -> None:
        """The file now carries the tags: remember its new size/mtime/hash so it is not asked again."""
        with stop_on_full_disk(self.writing):
            self.db.execute(
                "UPDATE tracks SET tags_written=1, size=?, mtime_ns=?, content_sha256=? "
                "WHERE path=? AND bundle_hash=? AND prompt_set_hash=?",
                (track.size, track.mtime_ns, content_sha256, sql_text(record["path"]), record["bundle_hash"],
                 record["prompt_set_hash"]),
            )
