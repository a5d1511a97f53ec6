"""Disk and memory exhaustion named as job errors, from the exceptions the libraries really
raise: writes to /dev/full (a device that always answers ENOSPC), allocations too large for
any machine."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from worker.failures import (
    GiB,
    disk_full_error,
    exhausted_memory,
    free_disk_bytes,
    is_disk_full,
    out_of_memory_error,
)

DEV_FULL = Path("/dev/full")
# More than any machine's address space: the allocation fails at once, nothing is used.
IMPOSSIBLE_BYTES = 1 << 62

needs_dev_full = pytest.mark.skipif(
    not (DEV_FULL.exists() and stat.S_ISCHR(DEV_FULL.stat().st_mode)),
    reason="/dev/full is not the ENOSPC device here",
)


def raised(action: Callable[[], object]) -> BaseException:
    """The exception `action` raises (the test fails if it raises none)."""
    with pytest.raises(BaseException) as caught:
        action()
    return caught.value


def torch_save_to_path() -> None:
    # By path, as the checkpoint writer does: the C++ stream reports a failed write.
    torch.save({"weight": torch.zeros(4096)}, DEV_FULL)


def torch_save_to_file() -> None:
    with DEV_FULL.open("wb") as stream:
        torch.save({"weight": torch.zeros(4096)}, stream)


def write_text() -> None:
    with DEV_FULL.open("w") as stream:
        stream.write("step,loss\n")


def wrapped_write() -> None:
    try:
        write_text()
    except OSError as exc:
        raise RuntimeError("could not save the checkpoint") from exc


@needs_dev_full
@pytest.mark.parametrize(
    "write",
    [torch_save_to_path, torch_save_to_file, write_text, wrapped_write],
    ids=lambda write: write.__name__,
)
def test_a_write_to_a_full_disk_is_disk_full(write: Callable[[], None]):
    assert is_disk_full(raised(write))


@needs_dev_full
def test_torch_save_by_path_hides_the_errno_but_is_still_recognized():
    error = raised(torch_save_to_path)
    chain_errnos = [getattr(e, "errno", None) for e in (error, error.__context__)]
    assert errno.ENOSPC not in chain_errnos  # what the issue saw: only C++ stream text
    assert is_disk_full(error)


def test_other_write_failures_are_not_disk_full(tmp_path: Path):
    missing = raised(lambda: (tmp_path / "no-such-dir" / "x.pt").write_text("x"))
    quota = OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))
    assert not is_disk_full(missing)
    assert not is_disk_full(raised(lambda: torch.ones(2) @ torch.ones(3)))
    assert is_disk_full(quota)


def test_out_of_memory_in_each_form_is_recognized():
    cpu_allocator = raised(lambda: torch.empty(IMPOSSIBLE_BYTES, dtype=torch.uint8))
    assert "can't allocate memory" in str(cpu_allocator)
    python_heap = raised(lambda: bytearray(IMPOSSIBLE_BYTES))
    assert isinstance(python_heap, MemoryError)
    cuda = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
    cuda_kernel = torch.AcceleratorError("CUDA error: out of memory")
    try:
        try:
            torch.empty(IMPOSSIBLE_BYTES, dtype=torch.uint8)
        except RuntimeError as exc:
            raise ValueError("batch failed") from exc
    except ValueError as exc:
        wrapped = exc

    assert exhausted_memory(cpu_allocator) == "host"
    assert exhausted_memory(python_heap) == "host"
    assert exhausted_memory(wrapped) == "host"
    assert exhausted_memory(cuda) == "accelerator"
    assert exhausted_memory(cuda_kernel) == "accelerator"


def test_other_runtime_errors_are_not_out_of_memory():
    assert exhausted_memory(raised(lambda: torch.ones(2) @ torch.ones(3))) is None
    assert exhausted_memory(raised(lambda: torch.zeros(2).view(3))) is None


def test_out_of_memory_error_gives_the_estimate_and_what_to_lower():
    error = out_of_memory_error("host", 39 * GiB)
    assert error["code"] == "out_of_memory"
    assert "memory (RAM)" in error["message"]
    assert "about 39.00 GiB" in error["message"]
    assert "batch_size" in error["message"]
    unknown = out_of_memory_error("accelerator", None)
    assert "GPU" in unknown["message"] and "estimated" not in unknown["message"]


def test_disk_full_error_says_how_much_is_free(tmp_path: Path):
    free = free_disk_bytes(tmp_path / "jobs" / "not-created-yet")
    assert free is not None and free > 0
    error = disk_full_error(3 * GiB // 2)
    assert error["code"] == "insufficient_storage"
    assert "ran out of disk space" in error["message"]
    assert "1.50 GiB free" in error["message"]
