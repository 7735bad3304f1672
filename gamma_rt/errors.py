"""The project's own error types. A user's mistake raises one of these; the CLI prints one line and exits non-zero."""


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
