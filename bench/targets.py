"""Performance targets (issue 5, ``small`` preset, 2-core CPU), judged as ratios taken within one run.

A ratio of two figures measured in the same run, on the same input and threads, holds on a shared,
noisy machine where an absolute figure would not. Targets are evaluated in the report, never in unit
tests. A missed target is investigated and its finding recorded in bench/results/FINDINGS.md, never loosened here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Target:
    """``ratio`` (a key of a result's ``ratios``) must be ``op`` ``threshold`` (``op`` is ">=" or "<=")."""

    ratio: str
    what: str
    op: str
    threshold: float


TARGETS = (
    Target("audio_eager_over_ort", "audio side: PyTorch eager ms / ONNX Runtime fp32 ms per window", ">=", 1.3),
    Target("decode_llamacpp_over_transformers", "decode tok/s: llama.cpp / transformers", ">=", 3.0),
    Target("decode_runtime_over_raw", "decode tok/s: runtime / llama.cpp raw loop", ">=", 0.9),
    Target("orchestration_overhead", "end-to-end time beyond the sum of stage times, fraction of that sum", "<=", 0.05),
    Target("ttft_10min_over_30s", "time to first token after end of audio: 10 min / 30 s input", "<=", 1.3),
    Target("throughput_prefix_reuse", "songs/hour at 5 questions: prefix reuse / one song per question", ">=", 3.0),
)


@dataclass(frozen=True)
class Verdict:
    target: Target
    value: float | None
    status: str  # PASS, MISS, or "n/a" when the run could not measure the ratio

    def to_dict(self) -> dict:
        t = self.target
        return {"ratio": t.ratio, "what": t.what, "target": f"{t.op} {t.threshold:g}", "value": self.value,
                "status": self.status}


def evaluate(ratios: dict[str, float | None], targets: tuple[Target, ...] = TARGETS) -> list[Verdict]:
    """One verdict per target from a result's ``ratios``; a missing or None ratio is "n/a", never a pass."""
    verdicts = []
    for t in targets:
        value = ratios.get(t.ratio)
        if value is None:
            status = "n/a"
        elif t.op == ">=":
            status = "PASS" if value >= t.threshold else "MISS"
        elif t.op == "<=":
            status = "PASS" if value <= t.threshold else "MISS"
        else:
            raise ValueError(f"target {t.ratio}: unknown comparison {t.op!r}")
        verdicts.append(Verdict(t, value, status))
    return verdicts
