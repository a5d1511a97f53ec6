"""Deterministic .tar.gz archives of artifact directories, built once and cached in storage.

Members are `top/<relative path>`. Only regular files and directories go in: symlinks (and
devices, sockets...) are skipped, never followed, so nothing outside the directory can leak
into a download. The same directory always gives the same bytes (sorted members, fixed
owners and modes, gzip mtime 0), so two requests racing to build one archive agree.

On the data dir an archive is fresh while it is newer than every file of its source. In a
bucket, object times have a one-second grain, so the archive instead carries a digest of the
source listing (names, sizes, etags) in its metadata and is rebuilt when that changes.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import json
import os
import stat
import tarfile
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path

from app.storage import Storage, StoredObject

# A relative posix path ("adapter/config.json") -> True to leave it out.
Skip = Callable[[str], bool]
SOURCE_DIGEST = "source-digest"  # object metadata key (S3 lowercases them)


class SourceMissing(Exception):
    """The directory to archive is absent, is not a real directory, or vanished mid-build."""


def _kept(relative: str, skip: Skip | None) -> bool:
    # Dot entries are temp files of writes in progress (`.x.part`, `.step-5-...` staging).
    hidden = relative.rsplit("/", 1)[-1].startswith(".")
    return not hidden and (skip is None or not skip(relative))


def _entries(source: Path, skip: Skip | None) -> Iterator[tuple[Path, str, bool]]:
    """(path, relative name, is_dir) for every kept entry, parents before children, sorted."""
    for root, dirs, files in os.walk(source, followlinks=False):
        base = Path(root)
        prefix = base.relative_to(source).as_posix()
        prefix = "" if prefix == "." else f"{prefix}/"
        # os.walk descends only into the directories left in `dirs`.
        dirs[:] = [
            name
            for name in sorted(dirs)
            if not (base / name).is_symlink() and _kept(prefix + name, skip)
        ]
        if prefix:
            yield base, prefix.rstrip("/"), True
        for name in sorted(files):
            if _kept(prefix + name, skip):
                yield base / name, prefix + name, False


def _directory_member(name: str, mtime: float) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    info.mtime = int(mtime)
    return info


def _add_file(tar: tarfile.TarFile, path: Path, name: str) -> None:
    # O_NOFOLLOW: a symlink (even one swapped in after the walk) is refused, not followed;
    # O_NONBLOCK: opening a FIFO does not hang the request.
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return
        raise
    with os.fdopen(descriptor, "rb") as handle:
        status = os.fstat(handle.fileno())
        if not stat.S_ISREG(status.st_mode):
            return
        info = tarfile.TarInfo(name)
        info.size = status.st_size
        info.mode = 0o644
        info.mtime = int(status.st_mtime)
        tar.addfile(info, handle)


@contextmanager
def _tar_gz(target: Path, compresslevel: int) -> Iterator[tarfile.TarFile]:
    """A deterministic tar.gz writer into `target` (gzip mtime 0, PAX), synced on close."""
    with target.open("wb") as raw:
        with (
            gzip.GzipFile(
                filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=compresslevel
            ) as compressed,
            tarfile.open(fileobj=compressed, mode="w", format=tarfile.PAX_FORMAT) as tar,
        ):
            yield tar
        raw.flush()
        os.fsync(raw.fileno())


def write_tar_gz(
    source: Path, target: Path, *, top: str, skip: Skip | None = None, compresslevel: int = 6
) -> None:
    """Write `source`'s tree as `target` (.tar.gz), every member under the folder `top`."""
    with _tar_gz(target, compresslevel) as tar:
        tar.addfile(_directory_member(top, source.stat().st_mtime))
        for path, relative, is_dir in _entries(source, skip):
            name = f"{top}/{relative}"
            if is_dir:
                tar.addfile(_directory_member(name, path.lstat().st_mtime))
            else:
                _add_file(tar, path, name)


def write_objects_tar_gz(
    storage: Storage,
    source_key: str,
    objects: list[StoredObject],
    target: Path,
    *,
    top: str,
    compresslevel: int = 6,
) -> None:
    """Write stored objects below `source_key` as `target`, streamed one object at a time;
    directories are those the names imply, all stamped with the newest object's time."""
    newest = max(item.modified for item in objects)
    with _tar_gz(target, compresslevel) as tar:
        tar.addfile(_directory_member(top, newest))
        written: set[str] = set()
        for item in objects:
            relative = _relative(item, source_key)
            parts = relative.split("/")
            for depth in range(1, len(parts)):
                folder = "/".join(parts[:depth])
                if folder not in written:
                    written.add(folder)
                    tar.addfile(_directory_member(f"{top}/{folder}", newest))
            info = tarfile.TarInfo(f"{top}/{relative}")
            info.size, info.mode, info.mtime = item.size, 0o644, int(item.modified)
            with closing(storage.open(item.key)) as stream:
                tar.addfile(info, stream)


def _newest_mtime_ns(source: Path, skip: Skip | None) -> int:
    newest = source.stat().st_mtime_ns
    for path, _relative, _is_dir in _entries(source, skip):
        newest = max(newest, path.lstat().st_mtime_ns)
    return newest


def cached_tar_gz(
    storage: Storage,
    source_key: str,
    archive_key: str,
    *,
    top: str,
    skip: Skip | None = None,
    compresslevel: int = 6,
) -> str:
    """`archive_key`, holding the archive of `source_key`: built (temp file, then committed)
    when absent or stale; raises SourceMissing when there is no source."""
    source = storage.local_path(source_key)
    if source is None:
        _cache_from_objects(storage, source_key, archive_key, top, skip, compresslevel)
    else:
        _cache_from_disk(storage, source, source_key, archive_key, top, skip, compresslevel)
    return archive_key


def _cache_from_disk(
    storage: Storage,
    source: Path,
    source_key: str,
    archive_key: str,
    top: str,
    skip: Skip | None,
    compresslevel: int,
) -> None:
    if source.is_symlink() or not source.is_dir():
        raise SourceMissing(source_key)
    target = storage.local_path(archive_key)
    assert target is not None, "a disk-backed source has a disk-backed archive"
    try:
        if target.stat().st_mtime_ns >= _newest_mtime_ns(source, skip):
            return
    except FileNotFoundError:
        pass
    temp = storage.temp_path(archive_key)
    try:
        write_tar_gz(source, temp, top=top, skip=skip, compresslevel=compresslevel)
        storage.commit(temp, archive_key)
    except FileNotFoundError as exc:
        raise SourceMissing(source_key) from exc
    finally:
        temp.unlink(missing_ok=True)


def _cache_from_objects(
    storage: Storage,
    source_key: str,
    archive_key: str,
    top: str,
    skip: Skip | None,
    compresslevel: int,
) -> None:
    objects = [
        item
        for item in storage.list_objects(source_key)
        if _kept(_relative(item, source_key), skip)
    ]
    if not objects:
        raise SourceMissing(source_key)
    listing = [(_relative(item, source_key), item.size, item.etag) for item in objects]
    digest = hashlib.sha256(json.dumps([top, compresslevel, listing]).encode()).hexdigest()
    current = storage.stat(archive_key)
    if current is not None and current.metadata.get(SOURCE_DIGEST) == digest:
        return
    temp = storage.temp_path(archive_key)
    try:
        write_objects_tar_gz(
            storage, source_key, objects, temp, top=top, compresslevel=compresslevel
        )
        storage.commit(temp, archive_key, metadata={SOURCE_DIGEST: digest})
    except FileNotFoundError as exc:
        raise SourceMissing(source_key) from exc
    finally:
        temp.unlink(missing_ok=True)


def _relative(item: StoredObject, source_key: str) -> str:
    return item.key.removeprefix(f"{source_key}/")
