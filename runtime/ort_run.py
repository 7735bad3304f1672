"""ONNX Runtime runs that Ctrl-C, a time limit and a memory cap stop, and whose failures are one line.

A run blocks in C: on the main thread Python's SIGINT handler cannot run until it returns, so the first
Ctrl-C would wait for a graph that may never end. So a run started on the main thread goes to a helper
thread while the main thread waits, interruptible; on Ctrl-C, or past :data:`RUN_TIME_LIMIT_S`, the run's
``RunOptions.terminate`` is set, which ORT checks between nodes. Runs on other threads (the encoder thread
of the pipeline) are stopped by :meth:`OrtRuns.interrupt`, which the thread that got the Ctrl-C calls.

Host memory: every session allocates from one arena of at most :func:`memory_cap` bytes (3/4 of the
machine's memory, or ``$GAMMA_RT_ORT_MAX_MEMORY``), so a graph that asks for 64 GiB is refused by ORT's
allocator in one line instead of filling the memory until the kernel kills the process.
"""

from __future__ import annotations

import os
import re
import threading

from gamma_rt.errors import BundleError, GammaError

RUN_TIME_LIMIT_S = 600.0  # one backend call (a batch of windows); far above a real encoder's seconds
MAX_MEMORY_ENV = "GAMMA_RT_ORT_MAX_MEMORY"
_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
_registered: list[int] = []  # the cap registered in this process (ORT keeps one allocator per device)


def memory_cap() -> int:
    """Bytes ONNX Runtime may hold in host memory: ``$GAMMA_RT_ORT_MAX_MEMORY`` (``512M``, ``8G``) or 3/4 of
    the machine's memory."""
    raw = os.environ.get(MAX_MEMORY_ENV, "").strip()
    if raw:
        m = re.fullmatch(r"(\d+)\s*([kmgt]?)i?b?", raw.lower())
        if not m or int(m.group(1)) == 0:
            raise GammaError(f"${MAX_MEMORY_ENV} is {raw!r}; give bytes with an optional K, M, G or T (8G)")
        return int(m.group(1)) * _UNITS[m.group(2)]
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") * 3 // 4


def capped_session_options(ort, options):
    """``options`` set to allocate host memory from the process's one capped arena (registered once)."""
    if not _registered:
        cap = memory_cap()
        info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
        ort.create_and_register_allocator(info, ort.OrtArenaCfg({"max_mem": cap}))
        _registered.append(cap)
    options.add_session_config_entry("session.use_env_allocators", "1")
    return options


class OrtRuns:
    """The runs of one backend in flight, each with its own RunOptions."""

    def __init__(self, time_limit_s: float = RUN_TIME_LIMIT_S):
        self.time_limit_s = time_limit_s
        self.lock = threading.Lock()
        self.active: dict[int, tuple] = {}

    def run(self, call, where: str, config: dict | None = None):
        """``call(run_options)``, stoppable; ORT's errors become one BundleError line naming ``where``."""
        import onnxruntime as ort

        options = ort.RunOptions()
        for key, value in (config or {}).items():
            options.add_run_config_entry(key, value)
        why: list[str] = []
        with self.lock:
            self.active[id(options)] = (options, why)
        timer = threading.Timer(self.time_limit_s, self._stop, (options, why, "time"))
        timer.daemon = True
        timer.start()
        try:
            if threading.current_thread() is threading.main_thread():
                return self._on_helper(call, options, why)
            return call(options)
        except KeyboardInterrupt:
            raise
        except Exception as e:  # ORT's Fail, RuntimeException, InvalidArgument...: the graph's, or a stop
            if "interrupt" in why:
                raise KeyboardInterrupt from None
            if "time" in why:
                raise BundleError(f"{where}: ONNX Runtime ran past {self.time_limit_s:g} s; stopped") from None
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise BundleError(f"{where}: ONNX Runtime failed ({first[:240]})") from None
        finally:
            timer.cancel()
            with self.lock:
                self.active.pop(id(options), None)

    def _on_helper(self, call, options, why: list):
        box: dict = {}

        def work():
            try:
                box["result"] = call(options)
            except BaseException as e:  # handed back to the main thread
                box["error"] = e

        helper = threading.Thread(target=work, name="gamma-rt-ort", daemon=True)
        helper.start()
        try:
            while helper.is_alive():
                helper.join(0.1)
        except KeyboardInterrupt:
            self._stop(options, why, "interrupt")
            helper.join()  # ORT returns at its next node
            raise
        if "error" in box:
            raise box["error"]
        return box.get("result")

    @staticmethod
    def _stop(options, why: list, reason: str) -> None:
        why.append(reason)
        options.terminate = True

    def interrupt(self) -> None:
        with self.lock:
            for options, why in self.active.values():
                self._stop(options, why, "interrupt")
