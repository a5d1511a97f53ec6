"""How much memory a job may use on this worker: the setting, the GPU's, or the machine's RAM.

`python -m worker.device_memory` prints it in bytes (nothing when it cannot tell):
`loraforge serve` asks once at start, so that its API refuses the jobs its own workers
could not hold.
"""

from __future__ import annotations

import os
from pathlib import Path

from app.config import Settings, get_settings

# cgroup v2, then v1: a container's memory limit and what the container uses now.
CGROUP_FILES = (
    (Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory.current")),
    (
        Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"),
        Path("/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ),
)


def device_memory_bytes(settings: Settings) -> int | None:
    """LORAFORGE_WORKER_MEMORY_BYTES, else the GPU's memory, else the RAM available now."""
    if settings.worker_memory_bytes is not None:
        return settings.worker_memory_bytes
    import torch

    if torch.cuda.is_available():
        return int(torch.cuda.get_device_properties(0).total_memory)
    return available_ram_bytes()


def available_ram_bytes() -> int | None:
    """RAM new allocations can get: MemAvailable, within this cgroup's limit if it has one."""
    found = [value for value in (_meminfo_available(), _cgroup_headroom()) if value is not None]
    return min(found) if found else _physical_ram()


def _meminfo_available() -> int | None:
    """Linux's estimate of memory available without swapping (page cache counts as free)."""
    try:
        lines = Path("/proc/meminfo").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        name, _, value = line.partition(":")
        if name == "MemAvailable":
            return int(value.split()[0]) * 1024  # the file's unit is kB
    return None


def _cgroup_headroom() -> int | None:
    """The container's memory limit minus its usage; None without a limit."""
    for limit_file, usage_file in CGROUP_FILES:
        try:
            limit, usage = limit_file.read_text().strip(), usage_file.read_text().strip()
        except OSError:
            continue
        if limit == "max":
            return None
        return max(0, int(limit) - int(usage))
    return None


def _physical_ram() -> int | None:
    """Installed RAM, where the system reports nothing better (macOS)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return None


if __name__ == "__main__":
    found = device_memory_bytes(get_settings())
    print("" if found is None else found)
