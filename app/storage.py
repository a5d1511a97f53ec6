"""Artifact storage under generated keys (`files/{org}/{file_id}`, `jobs/{job_id}/...`).

Local disk in the data dir today; the deployment issue adds an S3-compatible backend behind
the same methods.
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path
from typing import BinaryIO

KEY_PATTERN = re.compile(r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_.-]+)*$")


class LocalStorage:
    """Objects as files below `root`; writes land in a temp file and are renamed into place."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, key: str) -> Path:
        if not KEY_PATTERN.match(key) or ".." in key.split("/"):
            raise ValueError(f"invalid storage key {key!r}")
        return self.root / key

    def temp_path(self, key: str) -> Path:
        """A fresh temp path beside `key`'s final place, for `commit` to rename."""
        final = self.path(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        return final.with_name(f".{final.name}.{secrets.token_hex(6)}.part")

    def commit(self, temp: Path, key: str) -> None:
        os.replace(temp, self.path(key))

    def open(self, key: str) -> BinaryIO:
        return self.path(key).open("rb")

    def size(self, key: str) -> int:
        return self.path(key).stat().st_size

    def exists(self, key: str) -> bool:
        return self.path(key).exists()

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)
