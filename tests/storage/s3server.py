"""A real S3-compatible server for tests: moto's standalone server as a subprocess on
127.0.0.1, stopped by pid; and the LORAFORGE_S3_* settings that point at one of its buckets."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from tests.databases import unique_name
from tests.live import START_TIMEOUT_S, free_port, stop

REGION = "us-east-1"
CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


@contextmanager
def moto_server(log_path: Path) -> Iterator[str]:
    """Start `python -m moto.server` on a free loopback port; yield its endpoint URL."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"moto exited: {log_path.read_text()[-2000:]}")
                try:
                    httpx.get(f"{endpoint}/moto-api/", timeout=1)
                    break
                except httpx.TransportError:
                    if time.monotonic() > deadline:
                        raise RuntimeError("moto did not start") from None
                    time.sleep(0.2)
            yield endpoint
        finally:
            stop(process, grace_s=5)


def s3_client(endpoint: str) -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name=REGION, **CREDENTIALS)


def create_bucket(endpoint: str) -> str:
    """A fresh, empty bucket with a random name."""
    name = unique_name("bucket")
    s3_client(endpoint).create_bucket(Bucket=name)
    return name


def bucket_keys(endpoint: str, bucket: str) -> set[str]:
    """Every object name in the bucket."""
    pages = s3_client(endpoint).get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return {item["Key"] for page in pages for item in page.get("Contents", [])}


def s3_settings(endpoint: str, bucket: str, prefix: str = "") -> dict[str, Any]:
    """Settings fields for the s3 backend on this server."""
    return {
        "storage_backend": "s3",
        "s3_bucket": bucket,
        "s3_prefix": prefix,
        "s3_endpoint_url": endpoint,
        "s3_region": REGION,
        "s3_access_key_id": CREDENTIALS["aws_access_key_id"],
        "s3_secret_access_key": CREDENTIALS["aws_secret_access_key"],
        "s3_addressing_style": "path",
    }


def s3_environment(endpoint: str, bucket: str, prefix: str = "") -> dict[str, str]:
    """The same, as LORAFORGE_* variables for a subprocess."""
    return {
        f"LORAFORGE_{k.upper()}": str(v) for k, v in s3_settings(endpoint, bucket, prefix).items()
    }
