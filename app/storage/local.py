"""The data dir as artifact storage: objects are files below `root`.

Writes land in a temp file beside their final place and are renamed into it. The worker's
workspace for a prefix is the storage directory itself, so pull and push into it are no-ops.
"""

from __future__ import annotations

import os
import secrets
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from app.storage.base import (
    CHUNK_BYTES,
    StoredObject,
    check_key,
    push_files,
    remove_stale_parts,
    walk_files,
)


class LocalStorage:
    """Objects as files below `root`; writes land in a temp file and are renamed into place."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, key: str) -> Path:
        return self.root / check_key(key)

    def temp_path(self, key: str) -> Path:
        """A fresh temp path beside `key`'s final place, for `commit` to rename."""
        final = self.path(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        return final.with_name(f".{final.name}.{secrets.token_hex(6)}.part")

    def commit(self, temp: Path, key: str, *, metadata: dict[str, str] | None = None) -> None:
        os.replace(temp, self.path(key))

    def put_file(self, source: Path, key: str) -> None:
        temp = self.temp_path(key)
        try:
            shutil.copyfile(source, temp)
            self.commit(temp, key)
        finally:
            temp.unlink(missing_ok=True)

    def remove_stale_parts(self, idle_s: float) -> list[Path]:
        return remove_stale_parts(self.root, idle_s)

    def open(self, key: str) -> BinaryIO:
        return self.path(key).open("rb")

    def iter_bytes(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        with self.open(key) as stream:
            stream.seek(start)
            position = start
            while end is None or position < end:
                wanted = CHUNK_BYTES if end is None else min(CHUNK_BYTES, end - position)
                chunk = stream.read(wanted)
                if not chunk:
                    return
                position += len(chunk)
                yield chunk

    def stat(self, key: str) -> StoredObject | None:
        try:
            status = self.path(key).lstat()
        except FileNotFoundError:
            return None
        if not stat.S_ISREG(status.st_mode):
            return None
        return _object(key, status)

    def size(self, key: str) -> int:
        return self.path(key).stat().st_size

    def exists(self, key: str) -> bool:
        return self.path(key).exists()

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def has_prefix(self, prefix: str) -> bool:
        directory = self.path(prefix)
        return directory.is_dir() and not directory.is_symlink()

    def list_objects(self, prefix: str) -> list[StoredObject]:
        """Regular files below `prefix/`; symlinks are never followed nor listed."""
        if not self.has_prefix(prefix):
            return []
        return [
            _object(f"{prefix}/{relative}", status)
            for relative, status in walk_files(self.path(prefix))
        ]

    def delete_prefix(self, prefix: str) -> None:
        shutil.rmtree(self.path(prefix), ignore_errors=True)

    def local_path(self, key: str) -> Path | None:
        return self.path(key)

    def fetch(self, key: str) -> Path:
        path = self.path(key)
        if not path.is_file():
            raise FileNotFoundError(key)
        return path

    def workspace(self, prefix: str) -> Path:
        return self.path(prefix)

    def pull(self, prefix: str, directory: Path, *, last: str | None = None) -> None:
        source = self.path(prefix)
        if _same(directory, source):
            return
        objects = self.list_objects(prefix)
        if directory.exists():
            shutil.rmtree(directory)
        directory.mkdir(parents=True)
        relatives = [item.key.removeprefix(f"{prefix}/") for item in objects]
        for relative in sorted(relatives, key=lambda name: name == last):
            target = directory / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / relative, target)

    def push(self, directory: Path, prefix: str, *, last: str | None = None) -> None:
        if not _same(directory, self.path(prefix)):
            push_files(self, directory, prefix, last=last)

    def release(self, prefix: str) -> None:
        """Nothing to drop: the workspace is the storage itself."""


def _same(left: Path, right: Path) -> bool:
    return left.resolve() == right.resolve()


def _object(key: str, status: os.stat_result) -> StoredObject:
    return StoredObject(
        key=key,
        size=status.st_size,
        modified=status.st_mtime,
        etag=f"{status.st_mtime_ns:x}-{status.st_size:x}",
    )
