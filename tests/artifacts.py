"""Fake artifact directories (what the worker would write) and reading tarballs back."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path


def write_files(directory: Path, files: dict[str, bytes]) -> None:
    """Write `files` (relative name -> bytes) under `directory`."""
    for name, content in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)


def members(content: bytes) -> dict[str, bytes | None]:
    """name -> bytes for files, None for directories."""
    with tarfile.open(fileobj=io.BytesIO(content), mode="r:gz") as tar:
        return {
            m.name: (tar.extractfile(m).read() if m.isfile() else None)  # type: ignore[union-attr]
            for m in tar.getmembers()
        }


def files_under(content: bytes, top: str) -> dict[str, bytes]:
    """The archive's files, named relative to `top`; every member must be under `top`."""
    found = members(content)
    assert all(name == top or name.startswith(f"{top}/") for name in found), list(found)
    return {name.removeprefix(f"{top}/"): data for name, data in found.items() if data is not None}


def extract(content: bytes, target: Path) -> dict[str, bytes]:
    """Extract like a careful client (tarfile's "data" filter refuses links, absolute names and
    `..`) and read the tree back as relative name -> bytes."""
    with tarfile.open(fileobj=io.BytesIO(content), mode="r:gz") as tar:
        tar.extractall(target, filter="data")
    return {
        path.relative_to(target).as_posix(): path.read_bytes()
        for path in sorted(target.rglob("*"))
        if path.is_file()
    }
