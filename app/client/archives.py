"""Unpacking downloaded .tar.gz archives without trusting their member names."""

from __future__ import annotations

import tarfile
from pathlib import Path, PurePosixPath


class UnsafeArchive(Exception):
    """A member that is not a plain file or directory, or that would land outside the target."""


def extract_tarball(archive: Path, into: Path) -> list[Path]:
    """Extract `archive` under `into`; returns the top-level entries it created.

    Only regular files and directories with relative names and no `..` are accepted, and
    tarfile's "data" filter checks again that nothing lands outside `into` (and drops
    unsafe modes).
    """
    into.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, mode="r:gz") as tar:
        members = tar.getmembers()
        for member in members:
            name = PurePosixPath(member.name)
            if name.is_absolute() or ".." in name.parts:
                raise UnsafeArchive(f"refusing archive member {member.name!r}: outside the target")
            if not (member.isfile() or member.isdir()):
                raise UnsafeArchive(f"refusing archive member {member.name!r}: not a plain file")
        try:
            tar.extractall(into, members=members, filter="data")
        except tarfile.FilterError as exc:
            raise UnsafeArchive(f"refusing archive: {exc}") from exc
    tops = sorted({Path(member.name).parts[0] for member in members if member.name})
    return [into / top for top in tops]
