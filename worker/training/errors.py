"""Failures the user can act on, kept apart from our own bugs.

A `TrainingInputError` means the job's input cannot train (bad data, too short a sequence
limit, a model or target module that does not exist): the job fails with its code and
message. Any other exception out of the engine is a bug: the caller records internal_error.
"""

from __future__ import annotations


class TrainingInputError(Exception):
    """The job's input cannot be trained on; `code`, `message` and `param` go to the user."""

    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param

    def as_dict(self) -> dict[str, str | None]:
        """The OpenAI-style error body: {"code", "message", "param"}."""
        return {"code": self.code, "message": self.message, "param": self.param}

    def __str__(self) -> str:
        where = f" ({self.param})" if self.param else ""
        return f"{self.code}{where}: {self.message}"
