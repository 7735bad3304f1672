"""File names that are not UTF-8, on their way from the library to the journal, the result files and the terminal.

On POSIX a file name is bytes. Python hands it over as a str in which each byte that is not UTF-8 is a
lone surrogate (``surrogateescape``: byte 0xff is U+DCFF), and ``open`` turns that str back into the same
bytes, so the str is the track's path everywhere in a run. Only where text must be valid Unicode does it
need care, and it gets the same answer each time, so a resumed run matches the track again:

- SQLite (journal, records.sqlite): a name that is valid UTF-8 is TEXT, as always; any other is a BLOB of
  its bytes (:func:`sql_text`), so journals written before keep matching their rows;
- JSON (the journal's records, records.jsonl): the surrogate is written as its escape ``\\udcff``
  (:func:`json_text`), which ``json.loads`` turns back into the same str;
- CSV: the name's own bytes (open the file with ``errors="surrogateescape"``);
- the terminal: gamma_rt.terminal.printable shows the byte as ``\\xff``.
"""

from __future__ import annotations

import json
import os
import re

_SURROGATE = re.compile("[\ud800-\udfff]")


def sql_text(value):
    """``value`` as SQLite can bind it: a str that is not valid UTF-8 becomes the bytes it stands for."""
    if not isinstance(value, str):
        return value
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return os.fsencode(value)
    return value


def from_sql(value):
    """The inverse of :func:`sql_text` for a value read back (a BLOB name becomes the str of its bytes)."""
    return os.fsdecode(value) if isinstance(value, bytes) else value


def json_text(obj) -> str:
    """``json.dumps(obj, ensure_ascii=False)``, valid UTF-8 whatever names ``obj`` holds: only lone
    surrogates are escaped (``\\udcff``), other text stays as it is."""
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", json.dumps(obj, ensure_ascii=False))

