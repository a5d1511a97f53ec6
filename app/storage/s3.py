"""An S3-compatible bucket as artifact storage (AWS S3, MinIO, Ceph RGW, R2...), via boto3.

Objects are `{prefix}/{key}` in the bucket. Work that needs files on disk (the training
engine, archive builds, upload staging) happens in a local cache directory: `workspace`
mirrors a prefix there, `pull` and `push` copy between the two, `release` drops the copy.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, cast

from app.storage.base import (
    CHUNK_BYTES,
    StoredObject,
    check_key,
    is_hidden,
    local_files,
    push_files,
    remove_stale_parts,
)

if TYPE_CHECKING:
    from app.config import Settings

MISSING_CODES = frozenset({"404", "NoSuchKey", "NotFound"})
DELETE_BATCH = 1000  # DeleteObjects takes at most 1000 keys


def client_from_settings(settings: Settings) -> Any:
    """A boto3 S3 client for the LORAFORGE_S3_* settings (empty ones: boto3's defaults)."""
    try:
        import boto3
        from botocore.config import Config
    except ImportError as exc:  # the api image and `pip install loraforge` leave it out
        raise RuntimeError(
            "LORAFORGE_STORAGE_BACKEND=s3 needs boto3: pip install 'loraforge[s3]'"
        ) from exc
    secret = settings.s3_secret_access_key
    return boto3.session.Session().client(
        "s3",
        endpoint_url=settings.s3_endpoint_url or None,
        region_name=settings.s3_region or None,
        aws_access_key_id=settings.s3_access_key_id or None,
        aws_secret_access_key=secret.get_secret_value() if secret else None,
        config=Config(
            s3={"addressing_style": settings.s3_addressing_style},
            retries={"max_attempts": 5, "mode": "standard"},
        ),
    )


def is_missing(exc: Exception) -> bool:
    """True for botocore's "no such key" errors (HEAD answers a bare 404)."""
    error = getattr(exc, "response", {}).get("Error", {})
    return str(error.get("Code")) in MISSING_CODES


class S3Storage:
    """Objects in `bucket` under `prefix`; local copies and staging in `cache_dir`."""

    def __init__(self, client: Any, bucket: str, prefix: str, cache_dir: Path) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.cache_dir = cache_dir

    @classmethod
    def from_settings(cls, settings: Settings) -> S3Storage:
        if not settings.s3_bucket:
            raise ValueError("LORAFORGE_STORAGE_BACKEND=s3 needs LORAFORGE_S3_BUCKET")
        return cls(
            client_from_settings(settings),
            settings.s3_bucket,
            settings.s3_prefix,
            settings.resolved_cache_dir(),
        )

    def name(self, key: str) -> str:
        """The bucket's object name for `key`."""
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    # -- single objects --------------------------------------------------------------------

    def temp_path(self, key: str) -> Path:
        check_key(key)
        staging = self.cache_dir / ".staging"
        staging.mkdir(parents=True, exist_ok=True)
        return staging / f"{secrets.token_hex(8)}.part"

    def commit(self, temp: Path, key: str, *, metadata: dict[str, str] | None = None) -> None:
        extra = {"ExtraArgs": {"Metadata": metadata}} if metadata else {}
        self.client.upload_file(str(temp), self.bucket, self.name(key), **extra)
        temp.unlink(missing_ok=True)

    def put_file(self, source: Path, key: str) -> None:
        self.client.upload_file(str(source), self.bucket, self.name(key))

    def remove_stale_parts(self, idle_s: float) -> list[Path]:
        """Only the local scratch has temp files: the bucket receives whole objects."""
        return remove_stale_parts(self.cache_dir, idle_s)

    def _get(self, key: str, **ranged: str) -> Any:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self.name(key), **ranged)
        except self.client.exceptions.ClientError as exc:
            if is_missing(exc):
                raise FileNotFoundError(key) from exc
            raise

    def open(self, key: str) -> BinaryIO:
        return cast(BinaryIO, self._get(key)["Body"])

    def iter_bytes(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        if end is not None and end <= start:
            return
        ranged = {}
        if start or end is not None:
            ranged["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        body = self._get(key, **ranged)["Body"]
        try:
            yield from body.iter_chunks(CHUNK_BYTES)
        finally:
            body.close()

    def stat(self, key: str) -> StoredObject | None:
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self.name(key))
        except self.client.exceptions.ClientError as exc:
            if is_missing(exc):
                return None
            raise
        return StoredObject(
            key=key,
            size=int(head["ContentLength"]),
            modified=head["LastModified"].timestamp(),
            etag=head["ETag"].strip('"'),
            metadata=dict(head.get("Metadata") or {}),
        )

    def size(self, key: str) -> int:
        found = self.stat(key)
        if found is None:
            raise FileNotFoundError(key)
        return found.size

    def exists(self, key: str) -> bool:
        return self.stat(key) is not None

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self.name(key))

    # -- prefixes --------------------------------------------------------------------------

    def _names(self, prefix: str) -> Iterator[dict[str, Any]]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=f"{self.name(prefix)}/"
        )
        for page in pages:
            yield from page.get("Contents", [])

    def has_prefix(self, prefix: str) -> bool:
        found = self.client.list_objects_v2(
            Bucket=self.bucket, Prefix=f"{self.name(prefix)}/", MaxKeys=1
        )
        return bool(found.get("KeyCount") or found.get("Contents"))

    def list_objects(self, prefix: str) -> list[StoredObject]:
        start = len(self.name(prefix)) + 1
        found = [
            StoredObject(
                key=f"{prefix}/{item['Key'][start:]}",
                size=int(item["Size"]),
                modified=item["LastModified"].timestamp(),
                etag=item["ETag"].strip('"'),
            )
            for item in self._names(prefix)
            if not is_hidden(item["Key"][start:])
        ]
        return sorted(found, key=lambda item: item.key)

    def delete_prefix(self, prefix: str) -> None:
        names = [item["Key"] for item in self._names(prefix)]
        for first in range(0, len(names), DELETE_BATCH):
            batch = [{"Key": name} for name in names[first : first + DELETE_BATCH]]
            self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})

    # -- local copies ----------------------------------------------------------------------

    def local_path(self, key: str) -> Path | None:
        return None

    def workspace(self, prefix: str) -> Path:
        return self.cache_dir / check_key(prefix)

    def fetch(self, key: str) -> Path:
        found = self.stat(key)
        if found is None:
            raise FileNotFoundError(key)
        target = self.workspace(key)
        self._download(found, target)
        return target

    def _download(self, found: StoredObject, target: Path) -> None:
        """Copy one object to `target` unless the copy there is already this version."""
        modified_ns = round(found.modified * 1e9)
        try:
            status = target.stat()
            if (status.st_size, status.st_mtime_ns) == (found.size, modified_ns):
                return
        except FileNotFoundError:
            pass
        target.parent.mkdir(parents=True, exist_ok=True)
        temp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.part")
        try:
            self.client.download_file(self.bucket, self.name(found.key), str(temp))
            os.utime(temp, ns=(modified_ns, modified_ns))
            os.replace(temp, target)
        finally:
            temp.unlink(missing_ok=True)

    def pull(self, prefix: str, directory: Path, *, last: str | None = None) -> None:
        objects = {item.key.removeprefix(f"{prefix}/"): item for item in self.list_objects(prefix)}
        if last is not None:
            (directory / last).unlink(missing_ok=True)
        for stale in set(local_files(directory)) - set(objects):
            (directory / stale).unlink()
        directory.mkdir(parents=True, exist_ok=True)
        for relative in sorted(objects, key=lambda name: name == last):
            self._download(objects[relative], directory / relative)

    def push(self, directory: Path, prefix: str, *, last: str | None = None) -> None:
        push_files(self, directory, prefix, last=last)

    def release(self, prefix: str) -> None:
        local = self.workspace(prefix)
        if local.is_dir() and not local.is_symlink():
            shutil.rmtree(local, ignore_errors=True)
        else:
            local.unlink(missing_ok=True)
