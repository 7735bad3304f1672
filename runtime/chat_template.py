"""A bundle's Jinja chat template, rendered in a sandbox with limits: the template is untrusted input.

Jinja's own sandbox stops attribute tricks but not cost: ``{{ 'x' * 10**12 }}``, ``'x'|center(10**12)``, a
macro that doubles its argument 40 times, or two nested loops over ``range(100000)`` would take the memory or
the time of the process. Here every operator, call and filter that can build a large value is bounded
(:data:`MAX_OUTPUT` characters or items, exponents to :data:`MAX_EXPONENT`), the rendered text too, and a
render that runs past :data:`TIME_LIMIT_S` is stopped (an exception raised in the rendering thread at its
next bytecode). Ctrl-C stops a render at once, as it stops anything else on the main thread. Every failure,
a division by zero included, is one :class:`BundleError` line naming ``prompt.chat_template``.
"""

from __future__ import annotations

import ctypes
import functools
import json
import re
import threading

from gamma_rt.errors import BundleError

MAX_OUTPUT = 1_000_000  # characters of rendered text, and of any string or list the template builds
MAX_EXPONENT = 64
TIME_LIMIT_S = 2.0
# a width or precision of 7+ digits in a format string ("%10000000s", "{:>10000000}")
_HUGE_FORMAT = re.compile(r"\d{7,}")
_SIZED = (str, list, tuple)


class TemplateLimit(Exception):
    """A chat template went past one of the limits (raised inside the render, reported as a BundleError)."""


class _TimeUp(BaseException):
    """Raised asynchronously in the rendering thread; a BaseException so that no ``except Exception`` in a
    filter swallows it."""


def render_chat_template(template: str, messages: list[dict], variables: dict, where: str,
                         time_limit_s: float = TIME_LIMIT_S) -> str:
    """Render ``template`` for ``messages`` with the generation prompt, in the sandboxed Jinja environment
    transformers uses (trim_blocks, lstrip_blocks, loop controls, ``raise_exception``, ``tojson``) plus the
    limits above. Returns the text; raises a one-line BundleError for any failure."""
    compiled = _compiled(template, where)
    pieces, size = [], 0
    try:
        with _Deadline(time_limit_s):
            for piece in compiled.generate(messages=messages, add_generation_prompt=True, **variables):
                size += len(piece)
                if size > MAX_OUTPUT:
                    raise TemplateLimit(f"renders more than {MAX_OUTPUT} characters")
                pieces.append(piece)
    except _TimeUp:
        raise BundleError(f"{where}: field prompt.chat_template ran past {time_limit_s:g} s; refused") from None
    except Exception as e:  # noqa: BLE001 - the template is the bundle's code: any failure is the bundle's
        raise BundleError(f"{where}: field prompt.chat_template does not render "
                          f"({type(e).__name__}: {_first_line(e)})") from None
    return "".join(pieces)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else "no message"


class _Deadline:
    """Raises _TimeUp in this thread when the block runs past ``seconds``. The timer and the block's end
    take one lock, so the exception is never delivered after the block: a pending one is cleared."""

    def __init__(self, seconds: float):
        self.seconds, self.lock, self.done, self.fired = seconds, threading.Lock(), False, False
        self.thread = threading.get_ident()

    def _fire(self) -> None:
        with self.lock:
            if not self.done:
                self.fired = True
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self.thread), ctypes.py_object(_TimeUp))

    def __enter__(self):
        self.timer = threading.Timer(self.seconds, self._fire)
        self.timer.daemon = True
        self.timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self.timer.cancel()
        with self.lock:
            self.done = True
            if self.fired:  # delivered already (we are unwinding it) or still pending: clear a pending one
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self.thread), ctypes.c_void_p(0))


def _check_size(value, what: str):
    if isinstance(value, _SIZED) and len(value) > MAX_OUTPUT:
        raise TemplateLimit(f"{what} builds {len(value)} characters or items, more than {MAX_OUTPUT}")
    return value


def _check_args(args, kwargs, what: str) -> None:
    for value in (*args, *kwargs.values()):
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_OUTPUT:
            raise TemplateLimit(f"{what} is given {value}, more than {MAX_OUTPUT}")
        _check_size(value, what)


def _check_format(fmt, what: str) -> None:
    if isinstance(fmt, str) and _HUGE_FORMAT.search(fmt):
        raise TemplateLimit(f"{what} has a format with a width or precision of 7 or more digits")


def _sandbox():
    from jinja2.runtime import Namespace
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class BoundedNamespace(Namespace):
        def __setitem__(self, name, value):
            super().__setitem__(name, _check_size(value, f"namespace.{name}"))

    class BoundedSandbox(ImmutableSandboxedEnvironment):
        # intercepted operators are also kept out of constant folding, so `'x' * 10**12` is not built at compile
        intercepted_binops = frozenset({"*", "**", "+", "%"})

        def call_binop(self, context, op, left, right):
            if op == "**" and isinstance(right, (int, float)) and abs(right) > MAX_EXPONENT:
                raise TemplateLimit(f"an exponent of {right}, more than {MAX_EXPONENT}")
            if op == "*":
                for seq, n in ((left, right), (right, left)):
                    if isinstance(seq, _SIZED) and isinstance(n, int) and len(seq) * max(n, 0) > MAX_OUTPUT:
                        raise TemplateLimit(f"'*' would build {len(seq) * n} characters or items")
            if op == "%":
                _check_format(left, "'%'")
                _check_args(right if isinstance(right, tuple) else (right,), {}, "'%'")
            if op == "+" and isinstance(left, _SIZED) and isinstance(right, _SIZED):
                _check_size(left, "'+'"), _check_size(right, "'+'")
            return _check_size(super().call_binop(context, op, left, right), f"'{op}'")

        def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 - Jinja's own signature
            _check_args(args, kwargs, f"calling {getattr(__obj, '__name__', 'a function')}")
            return _check_size(super().call(__context, __obj, *args, **kwargs), "a call")

        def wrap_str_format(self, value):  # the sandbox's own str.format, given at attribute access
            wrapped = super().wrap_str_format(value)
            if wrapped is not None:
                _check_format(value.__self__, "str.format")
            return wrapped

    env = BoundedSandbox(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters = {name: _bounded_filter(name, f) for name, f in env.filters.items()}
    env.filters["tojson"] = _bounded_filter("tojson", _tojson)
    env.globals["raise_exception"] = _raise_exception
    env.globals["namespace"] = BoundedNamespace
    return env


def _bounded_filter(name: str, f):
    @functools.wraps(f)
    def bounded(*args, **kwargs):
        values = args[1:] if getattr(f, "jinja_pass_arg", None) else args
        _check_args(values, kwargs, f"filter {name}")
        if name == "format" and values:
            _check_format(values[0], "filter format")
        return _check_size(f(*args, **kwargs), f"filter {name}")

    return bounded


def _raise_exception(message):
    from jinja2.exceptions import TemplateError

    raise TemplateError(message)


@functools.lru_cache(maxsize=8)
def _compiled_cached(template: str):
    return _sandbox().from_string(template)


def _compiled(template: str, where: str):
    """The template compiled once (every question renders it again; compiling is the costly part)."""
    try:
        return _compiled_cached(template)
    except Exception as e:  # noqa: BLE001 - a syntax error, or a constant the compiler folds and fails on
        raise BundleError(f"{where}: field prompt.chat_template does not render "
                          f"({type(e).__name__}: {_first_line(e)})") from None


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

