"""Which job error an exception becomes: the user's input, or disk or memory the worker ran
out of. Anything else is our bug: the runner records internal_error and logs the traceback.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from app.memory import MEMORY_ADVICE
from app.storage import is_disk_full as failed_for_space

GiB = 1 << 30
DISK_FULL_MARKERS = (
    # torch.save writes through a C++ stream, which drops errno: a failed write surfaces as
    # this text (the context of "[enforce fail ...] unexpected pos"), or as the second one.
    "basic_ios::clear: iostream error",
    "PytorchStreamWriter failed writing file",
    # Rust's io::Error (safetensors) reaches Python as text only.
    os.strerror(errno.ENOSPC),
    os.strerror(errno.EDQUOT),
)
# torch's CPU allocator ("DefaultCPUAllocator: can't allocate memory"); CUDA's ("CUDA out of
# memory", "CUDA error: out of memory") and MPS's ("MPS backend out of memory").
OUT_OF_MEMORY_MARKERS = ("can't allocate memory", "out of memory")
ACCELERATOR_MARKERS = ("cuda", "mps backend", "xpu")

Memory = Literal["accelerator", "host"]


class UserError(Exception):
    """A failure the user can act on, found by the runner itself (not the engine)."""

    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.param = code, message, param


def user_error(exc: Exception) -> dict[str, Any] | None:
    """The job error for failures the user caused; None for anything else."""
    from app.datasets import DatasetError
    from worker.training.errors import TrainingInputError

    if isinstance(exc, TrainingInputError | UserError):
        return {"code": exc.code, "message": exc.message, "param": exc.param}
    if isinstance(exc, DatasetError):
        return {"code": "invalid_training_file", "message": str(exc), "param": "training_file"}
    return None


def exception_chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception and every cause and context behind it, each once."""
    seen: set[int] = set()
    pending = [exc]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        pending += [e for e in (current.__cause__, current.__context__) if e is not None]


def is_disk_full(exc: BaseException) -> bool:
    """Whether a write failed for want of disk space (or quota), anywhere in the chain: an
    errno, or the text a library that dropped it left."""
    if failed_for_space(exc):
        return True
    return any(
        marker in str(error) for error in exception_chain(exc) for marker in DISK_FULL_MARKERS
    )


def exhausted_memory(exc: BaseException) -> Memory | None:
    """Which memory an allocation failed in, anywhere in the chain; None if none did."""
    for error in exception_chain(exc):
        if type(error).__name__ == "OutOfMemoryError":  # torch's, for every accelerator
            return "accelerator"
        if isinstance(error, MemoryError):
            return "host"
        if isinstance(error, OSError) and error.errno == errno.ENOMEM:
            return "host"
        text = str(error).lower()
        if isinstance(error, RuntimeError) and any(m in text for m in OUT_OF_MEMORY_MARKERS):
            return "accelerator" if any(m in text for m in ACCELERATOR_MARKERS) else "host"
    return None


def free_disk_bytes(path: Path) -> int | None:
    """Free bytes on the filesystem holding `path` (or its nearest existing parent)."""
    for candidate in (path, *path.parents):
        try:
            return shutil.disk_usage(candidate).free
        except OSError:
            continue
    return None


def disk_full_error(free_bytes: int | None) -> dict[str, Any]:
    """The job error for a worker whose disk filled up under the job's files."""
    free = f" ({free_bytes / GiB:.2f} GiB free now)" if free_bytes is not None else ""
    return {
        "code": "insufficient_storage",
        "param": None,
        "message": (
            f"the worker ran out of disk space while writing the job's checkpoints, adapter "
            f"or metrics{free}. Ask the operator to free space on the worker's data disk, or "
            "set a larger training.checkpoint_every_steps, then create the job again"
        ),
    }


def out_of_memory_error(memory: Memory, estimated_bytes: int | None) -> dict[str, Any]:
    """The job error for a training run that ran out of memory, with the job's estimate."""
    where = "accelerator (GPU) memory" if memory == "accelerator" else "memory (RAM)"
    estimate = (
        f"; it was estimated to need about {estimated_bytes / GiB:.2f} GiB"
        if estimated_bytes is not None
        else ""
    )
    return {
        "code": "out_of_memory",
        "param": None,
        "message": f"the job ran out of {where} on its worker{estimate}. {MEMORY_ADVICE}",
    }
