"""Result files of a tagging run, derived from the journal: JSONL (default), CSV or SQLite.

The journal holds every record; these files are views of it. At the start and the end of a run the file is
rebuilt from the journal and atomically swapped in (write a temporary, ``os.replace``), and in between each
newly committed record is appended. A kill between a journal commit and the append, or in the middle of an
append, is therefore repaired by the next run's rebuild: no record is lost or written twice. A full disk
raises DiskFull and leaves no temporary behind; the journal still holds every record for the next rebuild.

A path that is not valid UTF-8 stays exact (names.py): an escape in JSONL, its own bytes in CSV, a BLOB in
SQLite.

Record fields: ``path, size, mtime_ns, content_sha256, duration_s, status ("ok"|"failed"), error,
answers {prompt name: parsed JSON}, timings {stage: seconds}, bundle_hash, prompt_set_hash``.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sqlite3
from pathlib import Path
from typing import Iterable

from gamma_rt.errors import stop_on_full_disk

from .names import from_sql, json_text, sql_text

FORMATS = ("jsonl", "csv", "sqlite")
_SCALARS = ("path", "status", "error", "duration_s", "size", "mtime_ns", "content_sha256", "bundle_hash",
            "prompt_set_hash")


def results_path(out_dir: Path, fmt: str) -> Path:
    return Path(out_dir) / {"jsonl": "records.jsonl", "csv": "records.csv", "sqlite": "records.sqlite"}[fmt]


class RecordFile:
    """One result file. ``prompt_names`` fix the answer columns of CSV and SQLite."""

    def __init__(self, path: Path, fmt: str, prompt_names: list[str]):
        self.path, self.fmt, self.prompt_names = Path(path), fmt, list(prompt_names)

    def rebuild(self, records: Iterable[dict]) -> int:
        """Write the whole file from ``records`` and swap it in atomically; returns the record count."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.unlink(missing_ok=True)
        try:
            with stop_on_full_disk(f"writing {self.path}"):
                n = self._write(tmp, records)
                os.replace(tmp, self.path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return n

    def _write(self, tmp: Path, records: Iterable[dict]) -> int:
        n = 0
        if self.fmt == "sqlite":
            db = self._open_sqlite(tmp)
            with db:
                for record in records:
                    db.execute(self._sqlite_insert(), self._sqlite_row(record))
                    n += 1
            db.close()
        else:
            with _open_text(tmp, "w") as f:
                if self.fmt == "csv":
                    f.write(self._csv_line(self._csv_header()))
                for record in records:
                    f.write(self._line(record))
                    n += 1
                f.flush()
                os.fsync(f.fileno())
        return n

    def append(self, record: dict) -> None:
        """Add one record that was just committed to the journal."""
        with stop_on_full_disk(f"writing {self.path}"):
            if self.fmt == "sqlite":
                db = self._open_sqlite(self.path)
                try:
                    with db:
                        db.execute(self._sqlite_insert(), self._sqlite_row(record))
                finally:
                    db.close()
                return
            with _open_text(self.path, "a") as f:
                f.write(self._line(record))

    # --- formats -------------------------------------------------------------------------------

    def _line(self, record: dict) -> str:
        if self.fmt == "jsonl":
            return json_text(record) + "\n"
        return self._csv_line(self._csv_row(record))

    def _csv_header(self) -> list[str]:
        return [*_SCALARS, *self.prompt_names, "timings"]

    def _csv_row(self, record: dict) -> list:
        answers = record.get("answers") or {}
        cells = [record.get(k) for k in _SCALARS]
        cells += [json_text(answers[p]) if p in answers else "" for p in self.prompt_names]
        return [*("" if c is None else c for c in cells), json.dumps(record.get("timings") or {})]

    @staticmethod
    def _csv_line(cells: list) -> str:
        buf = io.StringIO()
        csv.writer(buf).writerow(cells)
        return buf.getvalue()

    def _open_sqlite(self, path: Path) -> sqlite3.Connection:
        db = sqlite3.connect(path)
        answer_cols = "".join(f", answer_{p} TEXT" for p in self.prompt_names)
        db.execute(
            "CREATE TABLE IF NOT EXISTS records (path TEXT PRIMARY KEY, status TEXT, error TEXT, duration_s REAL,"
            " size INTEGER, mtime_ns INTEGER, content_sha256 TEXT, bundle_hash TEXT, prompt_set_hash TEXT"
            f"{answer_cols}, answers TEXT, timings TEXT)"
        )
        return db

    def _sqlite_insert(self) -> str:
        cols = [*_SCALARS, *(f"answer_{p}" for p in self.prompt_names), "answers", "timings"]
        # keyed by path: appending a record that a rebuild already holds replaces it, never duplicates it
        return f"INSERT OR REPLACE INTO records ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"

    def _sqlite_row(self, record: dict) -> tuple:
        answers = record.get("answers") or {}
        return (
            *(sql_text(record.get(k)) for k in _SCALARS),
            *(json_text(answers[p]) if p in answers else None for p in self.prompt_names),
            json_text(answers),
            json.dumps(record.get("timings") or {}),
        )


def read_records(path: Path, fmt: str) -> list[dict]:
    """Read a result file back (tests and tools): JSONL and SQLite give records, CSV gives its rows."""
    path = Path(path)
    if fmt == "jsonl":
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if fmt == "csv":
        with _open_text(path, "r") as f:
            return list(csv.DictReader(f))
    db = sqlite3.connect(path)
    db.row_factory = sqlite3.Row
    rows = [{k: from_sql(v) for k, v in dict(r).items()} for r in db.execute("SELECT * FROM records")]
    db.close()
    return rows


def _open_text(path: Path, mode: str):
    """A JSONL or CSV file: UTF-8, a file name's bytes that are not UTF-8 kept as they are (CSV)."""
    return open(path, mode, encoding="utf-8", errors="surrogateescape", newline="")
