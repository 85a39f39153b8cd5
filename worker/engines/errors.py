"""Errors the engines raise, each carrying the job error code the worker records.

The worker maps ``EngineError.code`` straight onto ``job.error.code``, so the message must
tell a person what to change (a parameter, a smaller size, a missing file), not just what
broke.
"""

from __future__ import annotations


class EngineError(Exception):
    """Base class: an engine failure with a stable machine-readable ``code``."""

    code: str = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(EngineError):
    """A parameter or input image is unusable; ``param`` names the offending field."""

    code = "invalid_input"

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class OutOfMemory(EngineError):
    """The job does not fit the device (estimated up front, or a real CUDA OOM)."""

    code = "out_of_memory"


class WeightsUnavailable(EngineError):
    """Network weights are missing; the message names the file and how to get it."""

    code = "internal"


class Canceled(Exception):  # noqa: N818 - the name is part of the worker interface
    """Raised by a progress callback to stop the engine; engines let it propagate.

    Deliberately not an ``EngineError``: a cancel is a user decision, not a failure.
    """
