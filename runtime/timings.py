"""Per-stage wall-clock timings of one run: read, front end, the four audio graphs, prefill, question, decode.

Stages add up over windows; ``--verbose`` and ``gamma-rt demo`` print them as a table, bench reads them as
a dict. Thread-safe, because the audio side runs on a worker thread while the decoder prefills.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Iterator

# Display order. The audio side's stages are the backend's; the rest are the pipeline's.
STAGES = (
    "read",  # decoding and resampling the audio file
    "front_end",  # log-mel spectrogram
    "temporal_encoder",
    "global_encoder",
    "fusion",
    "projector",
    "cache",  # reading or writing cached embeddings
    "prefill",  # decoder evaluation of the prompt head and the audio embeddings
    "question",  # decoder evaluation of the question text after the audio
    "decode",  # generating the answer
)
AUDIO_SIDE = ("temporal_encoder", "global_encoder", "fusion", "projector")


class StageTimes:
    """Milliseconds and call counts per stage, summed since the last :meth:`reset`."""

    def __init__(self):
        self._lock = threading.Lock()
        self.ms: dict[str, float] = {}
        self.calls: dict[str, int] = {}

    def add(self, stage: str, ms: float, calls: int = 1) -> None:
        with self._lock:
            self.ms[stage] = self.ms.get(stage, 0.0) + ms
            self.calls[stage] = self.calls.get(stage, 0) + calls

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, (time.perf_counter() - t0) * 1e3)

    def merge(self, other: "StageTimes") -> None:
        for stage, ms in other.ms.items():
            self.add(stage, ms, other.calls.get(stage, 0))

    def reset(self) -> None:
        with self._lock:
            self.ms.clear()
            self.calls.clear()

    def rows(self) -> list[tuple[str, float, int]]:
        """(stage, ms, calls) in display order, stages that never ran left out."""
        # stages STAGES does not name are a bundle's own audio graphs (``encoder``...): they go where the
        # audio side goes, after the front end, in the order they first ran
        graphs = [s for s in self.ms if s not in STAGES]
        order = [*STAGES[:2], *graphs, *STAGES[2:]]
        return [(s, self.ms[s], self.calls[s]) for s in order if s in self.ms]

    def to_dict(self) -> dict:
        return {s: {"ms": round(ms, 3), "calls": n} for s, ms, n in self.rows()}


def timing_table(times: StageTimes, extra: dict[str, float] | None = None, title: str = "timings"):
    """A rich Table of the stages (ms, calls, share of the summed time) plus ``extra`` key figures in ms."""
    from rich.table import Table

    rows = times.rows()
    total = sum(ms for _, ms, _ in rows) or 1.0
    table = Table(title=title)
    table.add_column("stage")
    table.add_column("ms", justify="right")
    table.add_column("calls", justify="right")
    table.add_column("share", justify="right")
    for stage, ms, calls in rows:
        table.add_row(stage, f"{ms:.1f}", str(calls), f"{100 * ms / total:.0f}%")
    for name, ms in (extra or {}).items():
        table.add_row(f"[bold]{name}[/bold]", f"{ms:.1f}", "", "")
    return table
