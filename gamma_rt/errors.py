"""The project's own error types. A user's mistake raises one of these; the CLI prints one line and exits non-zero."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator


class GammaError(Exception):
    """A user-facing error: bad input, a mismatched artifact, a missing file. Printed as one line."""

    exit_code = 2


class CheckpointError(GammaError):
    """A checkpoint folder is missing a file or holds tensors that do not fit its config."""


class BundleError(GammaError):
    """A bundle or its manifest is missing, corrupt, of another schema or inconsistent."""


class AudioError(GammaError):
    """Audio that cannot be decoded or used: empty, corrupt, non-finite samples."""


class EngineMismatch(BundleError):
    """A compiled engine was built for another GPU, compute capability or TensorRT version."""


class PromptSetError(GammaError):
    """A tagging prompt set (TOML/YAML) that cannot be used: bad field, unsupported JSON schema."""


class AnswerError(GammaError):
    """A model answer that does not parse against its prompt's JSON schema (e.g. cut at max_tokens)."""


class TagWriteError(GammaError):
    """Writing tags into an audio file failed or could not be verified; the original file is untouched."""


class DiskFull(GammaError):
    """A write failed for want of space (ENOSPC, a quota, SQLite's SQLITE_FULL). What was written before
    it stays valid: journal commits are whole or absent, files are swapped in atomically."""


def is_disk_full(error: BaseException) -> bool:
    """Whether ``error`` says the disk (or the user's quota) is full."""
    import errno
    import sqlite3

    if isinstance(error, OSError):
        return error.errno in (errno.ENOSPC, errno.EDQUOT)
    return isinstance(error, sqlite3.Error) and getattr(error, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL


@contextmanager
def stop_on_full_disk(what: str) -> Iterator[None]:
    """Turn a full disk met while ``what`` (e.g. "writing the journal x.sqlite") into one DiskFull line,
    ``disk full: writing the journal x.sqlite (database or disk is full); free space and rerun``; every
    other error passes unchanged."""
    import sqlite3

    try:
        yield
    except (OSError, sqlite3.Error) as e:
        if not is_disk_full(e):
            raise
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise DiskFull(f"disk full: {what} ({reason}); free space and rerun") from None
