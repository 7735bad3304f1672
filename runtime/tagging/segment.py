"""Which part of each track is analysed: ``--segment middle:60`` asks about one minute from the middle
instead of the whole song (a library tags several times faster; genre and mood rarely need more).

    Segment.parse("start:30")   # the first 30 s
    Segment.parse("middle:60")  # 60 s centred on the middle
    Segment.parse("end:45")     # the last 45 s
    Segment.parse("90:60")      # 60 s from 1:30

A track shorter than the segment is analysed whole. The segment is part of a record's identity: records
made from another segment (or the whole track) are asked again, never mixed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from gamma_rt.errors import GammaError

ANCHORS = ("start", "middle", "end")


@dataclass(frozen=True)
class Segment:
    anchor: str  # start | middle | end | an offset in seconds, as text
    seconds: float  # length analysed

    @classmethod
    def parse(cls, spec: str) -> "Segment":
        where, _, length = spec.partition(":")
        try:
            seconds = float(length)
            offset_ok = where in ANCHORS or 0 <= float(where) < math.inf
        except ValueError:
            seconds, offset_ok = -1, False
        if not offset_ok or not 0 < seconds < math.inf:  # "nan" and "inf" parse as floats
            raise GammaError(f"--segment {spec!r}: expected start:S, middle:S, end:S or OFFSET:S "
                             "(seconds, e.g. middle:60 or 90:30)")
        return cls(where, seconds)

    def span(self, duration_s: float | None) -> tuple[float, float | None]:
        """(start in s, length in s) of this segment in a track of ``duration_s`` (None: unknown length,
        read from the offset, or the start)."""
        if duration_s is None:
            offset = float(self.anchor) if self.anchor not in ANCHORS else 0.0
            return offset, self.seconds
        if duration_s <= self.seconds and self.anchor in ANCHORS:
            return 0.0, duration_s
        offset = {"start": 0.0, "middle": (duration_s - self.seconds) / 2, "end": duration_s - self.seconds}.get(
            self.anchor)
        if offset is None:
            offset = min(float(self.anchor), duration_s)
        return offset, min(self.seconds, duration_s - offset)

    def __str__(self) -> str:
        return f"{self.anchor}:{self.seconds:g}"
