"""Errors ragkit raises on bad input; each message names the file, line or field at fault."""
from __future__ import annotations


class RagkitError(Exception):
    """Base class for every error ragkit raises on purpose."""


class CorpusError(RagkitError):
    """A corpus could not be read: malformed line, missing field, duplicate id, empty corpus."""

    def __init__(self, message: str, path: str | None = None, line: int | None = None) -> None:
        self.path, self.line = path, line
        where = f"{path}:{line}: " if path and line else (f"{path}: " if path else "")
        super().__init__(where + message)


class IndexFormatError(RagkitError):
    """A folder is not a ragkit index, or one ragkit cannot load (version, encoder mismatch)."""


class UnknownRetrieverError(RagkitError, ValueError):
    """A retriever name that the index does not have."""


class ModelLoadError(RagkitError):
    """A model could not be found or loaded."""


class AdapterError(RagkitError):
    """An adapter folder is missing or wrong, or does not fit the model it is attached to."""


class CheckpointError(RagkitError):
    """A training checkpoint that cannot be resumed: damaged, from another ragkit, or another model's."""


class BackendError(RagkitError):
    """An LLM endpoint could not be reached or answered with an error."""


class PromptTooLongError(RagkitError):
    """A prompt (with the room asked for the answer) does not fit the model's context window."""


class ServerBusyError(RagkitError):
    """The model's batch and its wait queue are full; `retry_after` is a suggested wait in seconds."""

    def __init__(self, message: str, retry_after: int = 1) -> None:
        self.retry_after = retry_after
        super().__init__(message)


class OutputPathError(RagkitError):
    """An output folder ragkit refuses to replace: a file, a folder ragkit did not write, or the corpus."""


class IndexLockedError(RagkitError):
    """Another process (or thread) is writing the same index; `pid` is its process id when known."""

    def __init__(self, message: str, pid: int | None = None) -> None:
        self.pid = pid
        super().__init__(message)


class WriteError(RagkitError, OSError):
    """Writing a folder failed (disk full, permissions, ...); the previous folder is left as it was.
    Also an OSError (with the cause's errno and filename), so code that caught the raw error still does."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""
