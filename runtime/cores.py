"""The CPU cores the audio side (ONNX Runtime's encoders) and the decoder (llama.cpp) both run on, when there
are not enough of them for both at once.

Each engine runs ``--threads`` threads that meet at a barrier after every graph node and spin while they wait
(llama.cpp's OpenMP team, ONNX Runtime's pool). Two such teams on too few cores do not share them: a thread
spins out its time slice waiting for a partner that has no core, and each engine runs 2 to 4 times slower
than alone, so the pair finishes later than one after the other would (bench/results/FINDINGS.md, "gamma-rt
serve on 2 cores: what a decode step costs"). So when they would oversubscribe the cores, the two do not run
at once: a Pipeline encodes a song's next window only after the current one is prefilled (a 90 s song on the
small preset, 2 threads: 31.7 s instead of 38.0), and `gamma-rt serve`'s two threads take turns, first come
first served: the listener one audio window per turn, the scheduler one prefill piece and one decode step.
Nothing is lost: neither engine leaves a core idle while it runs, and the decode steps that wait for a window
meanwhile gather more sequences per batch.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator

from gamma_rt.machine import available_cores


def cores_shared(backend_name: str, decoder_gpu_layers: int, threads: int | None) -> bool:
    """True when the audio graphs and the decoder both run on the CPU with more threads than cores together
    (``threads`` None: each engine takes every core)."""
    if backend_name != "ort-cpu" or decoder_gpu_layers > 0:
        return False
    cores = available_cores()
    return 2 * (threads or cores) > cores


class Cores:
    """Turns on the CPU for the threads that share it, first come first served; with ``shared`` False every
    turn is granted at once."""

    def __init__(self, shared: bool):
        self.shared = shared
        self._turns = threading.Condition()
        self._next = 0  # the ticket the next caller takes
        self._serving = 0  # the ticket whose turn it is

    @contextmanager
    def turn(self) -> Iterator[None]:
        """Hold the cores for the ``with`` block; waits for the turns asked for before this one."""
        if not self.shared:
            yield
            return
        with self._turns:
            ticket, self._next = self._next, self._next + 1
            while ticket != self._serving:
                self._turns.wait()
        try:
            yield
        finally:
            with self._turns:
                self._serving += 1
                self._turns.notify_all()
