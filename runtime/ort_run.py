"""ONNX Runtime runs that Ctrl-C and a time limit stop, and whose failures are one line.

A run blocks in C: on the main thread Python's SIGINT handler cannot run until it returns, so the first
Ctrl-C would wait for a graph that may never end. So a run started on the main thread goes to a helper
thread while the main thread waits, interruptible; on Ctrl-C, or past :data:`RUN_TIME_LIMIT_S`, the run's
``RunOptions.terminate`` is set, which ORT checks between nodes. Runs on other threads (the encoder thread
of the pipeline) are stopped by :meth:`OrtRuns.interrupt`, which the thread that got the Ctrl-C calls.
"""

from __future__ import annotations

import threading

from gamma_rt.errors import BundleError

RUN_TIME_LIMIT_S = 600.0  # one backend call (a batch of windows); far above a real encoder's seconds


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
