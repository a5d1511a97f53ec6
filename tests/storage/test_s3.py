"""What only the bucket backend has: object names under a prefix, settings, a clear error
when boto3 is missing."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from app.config import Settings
from app.storage import build_storage
from app.storage.s3 import S3Storage
from tests.storage.s3server import bucket_keys, s3_settings


def bucket_settings(tmp_path: Path, endpoint: str, bucket: str, prefix: str = "") -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        _env_file=None,  # type: ignore[call-arg]
        **s3_settings(endpoint, bucket, prefix),  # type: ignore[arg-type]
    )


def test_objects_live_under_the_prefix_and_prefixes_do_not_mix(
    tmp_path: Path, s3_endpoint: str, s3_bucket: str
):
    ours = build_storage(bucket_settings(tmp_path, s3_endpoint, s3_bucket, "/team-a/"))
    theirs = build_storage(bucket_settings(tmp_path, s3_endpoint, s3_bucket, "team-b"))
    source = tmp_path / "f"
    source.write_bytes(b"x")

    ours.put_file(source, "files/org/file-1")
    theirs.put_file(source, "files/org/file-2")

    assert bucket_keys(s3_endpoint, s3_bucket) == {
        "team-a/files/org/file-1",
        "team-b/files/org/file-2",
    }
    assert [o.key for o in ours.list_objects("files/org")] == ["files/org/file-1"]
    assert not ours.exists("files/org/file-2")


def test_committed_metadata_is_kept(tmp_path: Path, s3_endpoint: str, s3_bucket: str):
    storage = build_storage(bucket_settings(tmp_path, s3_endpoint, s3_bucket))
    temp = storage.temp_path("jobs/j/adapter.tar.gz")
    temp.write_bytes(b"archive")

    storage.commit(temp, "jobs/j/adapter.tar.gz", metadata={"source-digest": "abc"})

    found = storage.stat("jobs/j/adapter.tar.gz")
    assert found is not None and found.metadata == {"source-digest": "abc"}


def test_the_s3_backend_is_chosen_by_settings(tmp_path: Path, s3_endpoint: str, s3_bucket: str):
    settings = bucket_settings(tmp_path, s3_endpoint, s3_bucket)
    storage = build_storage(settings)
    assert isinstance(storage, S3Storage)
    assert storage.bucket == s3_bucket
    assert storage.cache_dir == tmp_path / "data" / "cache"
    assert storage.client.meta.endpoint_url == s3_endpoint


def test_s3_without_a_bucket_is_refused(tmp_path: Path):
    settings = Settings(data_dir=tmp_path, storage_backend="s3", _env_file=None)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="LORAFORGE_S3_BUCKET"):
        build_storage(settings)


def test_s3_without_boto3_says_which_extra_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setitem(sys.modules, "boto3", None)  # what `import boto3` sees when absent
    settings = Settings(
        data_dir=tmp_path,
        storage_backend="s3",
        s3_bucket="b",
        _env_file=None,  # type: ignore[call-arg]
    )
    with pytest.raises(RuntimeError, match=r"loraforge\[s3\]"):
        build_storage(settings)
