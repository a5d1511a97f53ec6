"""Artifact storage: the data dir (default) or an S3-compatible bucket, chosen by settings."""

from __future__ import annotations

from typing import TYPE_CHECKING

from app.storage.base import KEY_PATTERN, Storage, StoredObject, check_key, is_disk_full
from app.storage.local import LocalStorage

if TYPE_CHECKING:
    from app.config import Settings

__all__ = [
    "KEY_PATTERN",
    "LocalStorage",
    "Storage",
    "StoredObject",
    "build_storage",
    "check_key",
    "is_disk_full",
]


def build_storage(settings: Settings) -> Storage:
    """The backend LORAFORGE_STORAGE_BACKEND names (boto3 is imported only for s3)."""
    if settings.storage_backend == "s3":
        from app.storage.s3 import S3Storage

        return S3Storage.from_settings(settings)
    return LocalStorage(settings.data_dir)
