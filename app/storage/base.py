"""The artifact-storage interface: objects under generated keys, and local mirrors of them.

Keys follow DESIGN §3 (`files/{org}/{file_id}`, `jobs/{job_id}/checkpoints/step-{N}/...`,
`exports/{export_id}/...`). A "directory" is every object below `prefix/`. Missing objects
raise FileNotFoundError on every backend.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Protocol

KEY_PATTERN = re.compile(r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_.-]+)*$")
CHUNK_BYTES = 1 << 20


def check_key(key: str) -> str:
    """`key` itself, or ValueError for anything that could escape the storage root."""
    if not KEY_PATTERN.match(key) or ".." in key.split("/"):
        raise ValueError(f"invalid storage key {key!r}")
    return key


def is_hidden(relative: str) -> bool:
    """Dot names are temp files of writes in progress (`.x.part`, `.step-5-...` staging)."""
    return any(part.startswith(".") for part in relative.split("/"))


# A write that failed for want of space (a full disk, or the user's disk quota).
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def is_disk_full(error: BaseException) -> bool:
    """Whether `error`, or an error it was raised from, is a write refused for want of space."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in DISK_FULL_ERRNOS:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def remove_stale_parts(directory: Path, idle_s: float) -> list[Path]:
    """Delete the temp files of writes (`.*.part`, or `*.part` in a staging folder) below
    `directory` that nothing has written to for `idle_s`: what a killed process left."""
    removed = []
    cutoff = time.time() - idle_s
    for root, _dirs, files in os.walk(directory, followlinks=False):
        for name in files:
            if not name.endswith(".part"):
                continue
            path = Path(root) / name
            try:
                if path.lstat().st_mtime < cutoff:
                    path.unlink()
                    removed.append(path)
            except FileNotFoundError:
                continue  # committed or removed meanwhile
    return removed


@dataclass(frozen=True)
class StoredObject:
    """One object: its key, size in bytes, modification time (epoch seconds) and etag."""

    key: str
    size: int
    modified: float
    etag: str
    metadata: dict[str, str] = field(default_factory=dict)


class Storage(Protocol):
    """What the API and the workers need from an artifact store."""

    def temp_path(self, key: str) -> Path:
        """A fresh local file to stage `key`'s bytes in, for `commit`."""
        ...

    def commit(self, temp: Path, key: str, *, metadata: dict[str, str] | None = None) -> None:
        """Move a staged file into place as `key` (the temp file is gone afterwards).

        `metadata` is kept where the backend keeps object metadata (S3)."""
        ...

    def put_file(self, source: Path, key: str) -> None:
        """Copy a local file in as `key`; `source` stays."""
        ...

    def remove_stale_parts(self, idle_s: float) -> list[Path]:
        """Delete the temp files of writes untouched for `idle_s` (killed uploads)."""
        ...

    def open(self, key: str) -> BinaryIO:
        """The object's bytes as a stream."""
        ...

    def iter_bytes(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """The bytes [start, end) in chunks; `end` None: to the end."""
        ...

    def stat(self, key: str) -> StoredObject | None:
        """The object's size, time and etag; None when there is none."""
        ...

    def size(self, key: str) -> int: ...

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None:
        """Remove the object; no error when it is already gone."""
        ...

    def has_prefix(self, prefix: str) -> bool:
        """True when `prefix` is a directory: some object lies below `prefix/`."""
        ...

    def list_objects(self, prefix: str) -> list[StoredObject]:
        """Every object below `prefix/`, sorted by key, dot names left out."""
        ...

    def delete_prefix(self, prefix: str) -> None:
        """Remove every object below `prefix/`."""
        ...

    def local_path(self, key: str) -> Path | None:
        """Where `key` lies on this machine's disk, when the backend is the disk."""
        ...

    def fetch(self, key: str) -> Path:
        """A local file holding the object's bytes (a cached copy for remote backends)."""
        ...

    def workspace(self, prefix: str) -> Path:
        """The local directory that mirrors `prefix`, where a worker reads and writes."""
        ...

    def pull(self, prefix: str, directory: Path, *, last: str | None = None) -> None:
        """Make `directory` a copy of the objects below `prefix/`; the file named `last`
        (a completion marker) is written after every other."""
        ...

    def push(self, directory: Path, prefix: str, *, last: str | None = None) -> None:
        """Make the objects below `prefix/` a copy of `directory`'s files; the file named
        `last` is removed first and stored after every other, so it marks a complete copy."""
        ...

    def release(self, prefix: str) -> None:
        """Drop the local copy of `prefix` where the storage keeps the original elsewhere."""
        ...


def walk_files(directory: Path) -> list[tuple[str, os.stat_result]]:
    """(relative name, lstat) of the regular files below `directory`, sorted; dot names and
    symlinks are left out, and a file that vanishes during the walk is skipped."""
    found = []
    for root, dirs, files in os.walk(directory, followlinks=False):
        base = Path(root)
        dirs[:] = [d for d in dirs if not d.startswith(".") and not (base / d).is_symlink()]
        for name in files:
            relative = (base / name).relative_to(directory).as_posix()
            try:
                status = (base / name).lstat()
            except FileNotFoundError:
                continue
            if not is_hidden(relative) and stat.S_ISREG(status.st_mode):
                found.append((relative, status))
    return sorted(found)


def local_files(directory: Path) -> list[str]:
    """Relative names of the regular files below `directory` (no dot names, no symlinks)."""
    return [relative for relative, _status in walk_files(directory)]


def push_files(storage: Storage, directory: Path, prefix: str, *, last: str | None) -> None:
    """Copy `directory`'s files to `prefix/` and drop objects it lacks; `last` goes last."""
    if last is not None:
        storage.delete(f"{prefix}/{last}")
    names = set(local_files(directory))
    for relative in sorted(names - {last}):
        storage.put_file(directory / relative, f"{prefix}/{relative}")
    for stale in storage.list_objects(prefix):
        if stale.key.removeprefix(f"{prefix}/") not in names:
            storage.delete(stale.key)
    if last is not None and last in names:
        storage.put_file(directory / last, f"{prefix}/{last}")
