"""The model side of the server: one opened bundle, its decoder context sized for ``parallel`` requests, the
listener and scheduler threads, and the metrics. The HTTP side (app.py) only talks to a :class:`Service`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from gamma_rt.errors import GammaError

from ..decoder import DecoderSession
from ..options import RuntimeOptions
from ..pipeline import MARKER_TOKENS, PROMPT_SLACK_TOKENS, Pipeline
from ..cores import Cores, cores_shared
from ..engine.listen import Listener
from .metrics import Metrics
from .protocol import Limits
from ..engine.scheduler import Scheduler


@dataclass(frozen=True)
class ServeOptions:
    """How the server takes requests (``gamma-rt serve``'s own flags; RuntimeOptions says how it runs them)."""

    # requests decoded together: the decoder context's sequences
    parallel: int = 4
    # KV cache cells, split evenly between the sequences; None: room for `parallel` requests of the longest audio
    ctx_size: int | None = None
    # requests that may wait for a sequence; past that, 429
    max_queue: int = 16
    # longest answer a request may ask for (max_tokens), and the default
    max_tokens: int = 512
    # longest audio a request may send, seconds; past that, 413
    max_audio_seconds: float = 300.0
    # largest request body, bytes; past that, 413
    max_body_bytes: int = 100 * 2**20
    # audio_url file:// paths are taken under this folder; None: refused
    local_files: Path | None = None
    # the model id of /v1/models and of requests; None: the bundle folder's name
    model_name: str | None = None
    # seconds a client has to send a request's head (request line and headers); past that, 408 and closed
    header_timeout_s: float = 10.0
    # seconds a client has to send a request's body, from its head; past that, 408 and closed
    body_timeout_s: float = 60.0
    # seconds an idle keep-alive connection stays open after its last response
    keep_alive_s: float = 5.0

    def __post_init__(self):
        for name in ("parallel", "max_tokens", "max_body_bytes"):
            if getattr(self, name) < 1:
                raise GammaError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.max_queue < 0:
            raise GammaError(f"--max-queue must be 0 or more, got {self.max_queue}")
        for name in ("max_audio_seconds", "header_timeout_s", "body_timeout_s", "keep_alive_s"):
            value = getattr(self, name)
            if not 0 < value < math.inf:
                flag = name.removesuffix("_s").replace("_", "-")
                raise GammaError(f"--{flag} must be a positive number of seconds, got {value}")
        if self.local_files is not None and not Path(self.local_files).is_dir():
            raise GammaError(f"--allow-local-files {self.local_files}: not a folder")

    @property
    def limits(self) -> Limits:
        local = Path(self.local_files) if self.local_files is not None else None
        return Limits(self.max_tokens, self.max_audio_seconds, local)


class Service:
    """An opened bundle serving requests. Use as a context manager; :meth:`close` stops the threads."""

    def __init__(self, pipeline: Pipeline, options: ServeOptions):
        self.pipeline, self.options = pipeline, options
        self.model = options.model_name or pipeline.bundle.resolve().name
        self.limits = options.limits
        self.metrics = Metrics()
        n_ctx = options.ctx_size or default_context(pipeline, options)
        pipeline.session.close()  # Pipeline.open sized one for a single song; the server needs `parallel` lanes
        # requests share no prefix: each sequence's own cells keep its attention off the others' (a step of 8
        # answers of 280 cells each, small preset on 2 cores: F16 146 ms instead of 191, F32 198 instead of 301)
        pipeline.session = DecoderSession(pipeline.decoder_file, n_ctx=n_ctx, n_threads=pipeline.options.threads,
                                          n_gpu_layers=pipeline.options.gpu_layers, n_seq_max=options.parallel,
                                          shared_cells=False, lora=pipeline.lora_file,
                                          kv_type=pipeline.options.kv_type)
        cores = Cores(cores_shared(pipeline.backend.name, pipeline.session.gpu_layers, pipeline.options.threads))
        self.listener = Listener(pipeline.backend, pipeline.layout, pipeline.cache, cores,
                                 batch=pipeline.options.batch_windows)
        self.scheduler = Scheduler(pipeline.session, pipeline.prompt, pipeline.layout, self.listener, self.metrics,
                                   options.max_queue)

    @classmethod
    def open(cls, bundle: str | Path, runtime: RuntimeOptions | None = None,
             options: ServeOptions | None = None) -> "Service":
        return cls(Pipeline.open(bundle, runtime or RuntimeOptions()), options or ServeOptions())

    @property
    def sample_rate(self) -> int:
        return self.pipeline.layout.sample_rate

    def describe(self) -> str:
        """One line for the log: what is served and how."""
        s = self.pipeline.session
        turns = "; encoder and decoder take turns on the cores" if self.listener.cores.shared else ""
        return (f"{self.model}: {self.pipeline.decoder_placement()}, audio on {self.pipeline.backend.name} "
                f"{self.pipeline.backend.precision}; {s.n_seq_max} sequences of {s.cells_per_sequence} tokens of "
                f"context{turns}")

    def close(self) -> None:
        self.scheduler.close()
        self.listener.close()
        self.pipeline.close()

    def __enter__(self) -> "Service":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def default_context(pipeline: Pipeline, options: ServeOptions) -> int:
    """KV cells for ``parallel`` requests that each send the longest audio and ask for the longest answer."""
    layout = pipeline.layout
    seconds = options.max_audio_seconds
    if layout.max_seconds is not None:
        seconds = min(seconds, layout.max_windows * layout.window_seconds)
    windows = math.ceil(seconds / layout.window_seconds)
    # the scheduler's own bound per request: whole windows (the last one's padding counted), markers, text
    per_request = windows * (layout.tokens_per_window + MARKER_TOKENS) + PROMPT_SLACK_TOKENS + options.max_tokens
    return options.parallel * -(-per_request // 256) * 256
