"""The server's Prometheus metrics (GET /metrics), in a registry of its own so two servers in one process
(tests) do not share counters. The process collector adds ``process_resident_memory_bytes`` and friends.
"""

from __future__ import annotations

from prometheus_client import (CollectorRegistry, Counter, Gauge, Histogram, PlatformCollector, ProcessCollector,
                               generate_latest)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

PREFIX = "gamma_rt"
# seconds; the first token includes the audio's encoding, so its buckets reach further than a token's
FIRST_TOKEN_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


class Metrics:
    """Counters, gauges and histograms the app and the scheduler update."""

    CONTENT_TYPE = CONTENT_TYPE_LATEST

    def __init__(self):
        r = self.registry = CollectorRegistry()
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        self.requests = Counter(f"{PREFIX}_requests", "HTTP requests answered, by endpoint and status code",
                                ["endpoint", "code"], registry=r)
        self.errors = Counter(f"{PREFIX}_request_errors", "requests answered with a 4xx/5xx, by status code",
                              ["code"], registry=r)
        self.cancelled_requests = Counter(f"{PREFIX}_cancelled_requests",
                                          "requests whose client went away before the answer was done", registry=r)
        self.queue_depth = Gauge(f"{PREFIX}_queue_depth", "requests waiting for a decoder sequence", registry=r)
        self.active = Gauge(f"{PREFIX}_active_sequences", "requests holding a decoder sequence", registry=r)
        self.ttft = Histogram(f"{PREFIX}_time_to_first_token_seconds",
                              "from the request's arrival to its first generated token", registry=r,
                              buckets=FIRST_TOKEN_BUCKETS)
        self.per_token = Histogram(f"{PREFIX}_time_per_output_token_seconds",
                                   "between two generated tokens of one answer", registry=r, buckets=TOKEN_BUCKETS)
        self.audio_seconds = Counter(f"{PREFIX}_audio_seconds", "seconds of audio heard", registry=r)
        self.windows = Counter(f"{PREFIX}_audio_windows", "30 s audio windows, by source: encoder or cache",
                               ["source"], registry=r)
        self.generated = Counter(f"{PREFIX}_generated_tokens", "answer tokens generated", registry=r)

    # --- from the app -----------------------------------------------------------------------------

    def answered_http(self, endpoint: str, code: int) -> None:
        self.requests.labels(endpoint, str(code)).inc()
        if code >= 400:
            self.errors.labels(str(code)).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    # --- from the scheduler -----------------------------------------------------------------------

    def scheduler(self, waiting: int, active: int) -> None:
        self.queue_depth.set(waiting)
        self.active.set(active)

    def first_token(self, seconds: float) -> None:
        self.ttft.observe(seconds)

    def next_token(self, seconds: float) -> None:
        self.per_token.observe(seconds)

    def heard(self, seconds: float, windows: int, cached: int) -> None:
        self.audio_seconds.inc(seconds)
        self.windows.labels("encoder").inc(windows - cached)
        self.windows.labels("cache").inc(cached)

    def answered(self, tokens: int) -> None:
        self.generated.inc(tokens)

    def cancelled(self) -> None:
        self.cancelled_requests.inc()
