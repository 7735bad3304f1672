"""Progress of a tagging run on stderr: tracks done, tracks/h, audio-hours/h, ETA, ok/failed.

A rich live bar when stderr is a terminal; otherwise (CI, logs, pipes) nothing until the summary."""

from __future__ import annotations

import sys
import time


class TagProgress:
    """Call :meth:`start` with the number of tracks to do, :meth:`advance` with each record, :meth:`close`."""

    def __init__(self, enabled: bool | None = None):
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.progress = None
        self.done = self.ok = self.failed = 0
        self.audio_s = 0.0

    def start(self, total: int) -> None:
        self.total, self.t0 = total, time.monotonic()
        if not self.enabled or total == 0:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        self.progress = Progress(TextColumn("tagging"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[rates]}"), transient=True)
        self.progress.start()
        self.task = self.progress.add_task("tag", total=total, rates="")

    def advance(self, record: dict) -> None:
        self.done += 1
        self.ok += record["status"] == "ok"
        self.failed += record["status"] == "failed"
        self.audio_s += record.get("duration_s") or 0.0
        if self.progress:
            self.progress.update(self.task, advance=1, rates=self.rates())

    def rates(self) -> str:
        """``"12.3 tracks/h · 0.41 audio-h/h · ETA 0:05:10 · ok 5 failed 1"``"""
        hours = max(time.monotonic() - self.t0, 1e-9) / 3600
        tracks_h, audio_h = self.done / hours, self.audio_s / 3600 / hours
        eta = (self.total - self.done) / tracks_h * 3600 if tracks_h else 0.0
        m, s = divmod(int(eta), 60)
        return (f"{tracks_h:,.0f} tracks/h · {audio_h:,.2f} audio-h/h · ETA {m // 60}:{m % 60:02d}:{s:02d}"
                f" · ok {self.ok} failed {self.failed}")

    def close(self) -> None:
        if self.progress:
            self.progress.stop()
            self.progress = None
