"""Text on its way to a person's terminal, with its control characters made visible.

A model's answer, a file name in a library or a string in an untrusted manifest can hold ESC and the other
C0 and C1 controls: printed raw, they move the cursor, rewrite what was printed before, retitle the window
or hide the rest of a line. Everything gamma-rt prints for people goes through :func:`printable`:

    print(printable(answer, layout=True))                       # an answer keeps its \\n and \\t
    print(f"gamma-rt: error: {printable(str(e))}", file=sys.stderr)  # one line, whatever it holds

Each control becomes its Python escape (ESC -> ``\\x1b``, CR -> ``\\r``); a file name's byte that was not
UTF-8 (a lone surrogate from ``surrogateescape``) becomes the byte (``\\xff``), so printing it cannot raise
UnicodeEncodeError either. Machine output (``--json``, JSONL and CSV records, tags written into files)
stays exact and never comes here.
"""

from __future__ import annotations

import re

# C0 controls, DEL, C1 controls and lone surrogates; \t and \n are kept where they lay out an answer
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_LAYOUT_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")
_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}
_ESCAPED_BYTES = range(0xDC80, 0xDD00)  # surrogateescape: U+DC80 + b is the byte b (0x80-0xff) of a name


def _escape(match: re.Match) -> str:
    c = match.group()
    code = ord(c)
    if c in _NAMED:
        return _NAMED[c]
    if code in _ESCAPED_BYTES:
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: object, layout: bool = False) -> str:
    """``text`` (or ``str(text)``) with every control character escaped. ``layout``: keep newlines and tabs
    (an answer's own lines); without it the result is always one line (an error, a name, a progress line)."""
    return (_LAYOUT_CONTROLS if layout else _CONTROLS).sub(_escape, str(text))
