"""One tenant's upload convoy must not stall the others: 100 concurrent uploads from one
organization against a live `loraforge api`, while another organization keeps reading.

On SQLite (the embedded stack's database) and on PostgreSQL. The reads keep p99 under 1 s,
nothing answers 5xx, and each upload either is kept or is refused with a 4xx that says why.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import statistics
import time
from collections import Counter
from collections.abc import Iterator
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path

import httpx
import pytest

from tests.databases import database
from tests.factories import chat_dataset
from tests.live import api_server, loraforge

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

UPLOADS = 100
# About 65 KB, the size of the files in the report that found the convoy.
DATASET = chat_dataset(400)
READ_P99_LIMIT_S = 1.0


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def live_api(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str, str]]:
    """A live API with two organizations: (base URL, uploader's key, reader's key)."""
    with database(request.param, tmp_path) as url:
        env = {
            "LORAFORGE_DATA_DIR": str(tmp_path / "data"),
            "LORAFORGE_DATABASE_URL": url,
            "LORAFORGE_RATE_LIMIT_PER_MINUTE": "100000",
        }
        with api_server(env, tmp_path / "api.log") as base_url:
            keys = []
            for org in ("convoy", "bystander"):
                created = loraforge(env, "keys", "create", "--org", org)
                assert created.returncode == 0, created.stderr
                keys.append(created.stdout.strip())
            yield base_url, keys[0], keys[1]


async def _upload_until_kept(client: httpx.AsyncClient, key: str) -> list[int]:
    """Upload once, retrying after a 429 as the openai SDK does; the statuses seen."""
    statuses = []
    for _ in range(60):
        response = await client.post(
            "/v1/files",
            headers={"Authorization": f"Bearer {key}"},
            files={"file": ("train.jsonl", DATASET, "application/jsonl")},
            data={"purpose": "fine-tune"},
        )
        statuses.append(response.status_code)
        if response.status_code != 429:
            return statuses
        assert response.json()["error"]["code"] == "too_many_concurrent_uploads"
        await asyncio.sleep(float(response.headers["retry-after"]))
    return statuses


async def _convoy(base_url: str, key: str) -> list[list[int]]:
    limits = httpx.Limits(max_connections=UPLOADS)
    async with httpx.AsyncClient(base_url=base_url, timeout=120, limits=limits) as client:
        return list(
            await asyncio.gather(*(_upload_until_kept(client, key) for _ in range(UPLOADS)))
        )


def run_convoy(base_url: str, key: str, results: Connection) -> None:
    """The uploading organization, in a process of its own: its client's work must not
    delay the reader's measurements."""
    results.send(asyncio.run(_convoy(base_url, key)))


def _read_until(base_url: str, key: str, convoy: BaseProcess) -> list[float]:
    """The bystander's reads, one after another until the convoy is over; their latencies."""
    latencies = []
    with httpx.Client(base_url=base_url, timeout=60) as client:
        headers = {"Authorization": f"Bearer {key}"}
        while convoy.is_alive():
            for path in ("/v1/files", "/v1/fine_tuning/jobs"):
                started = time.perf_counter()
                response = client.get(path, headers=headers)
                latencies.append(time.perf_counter() - started)
                assert response.status_code == 200, response.text
    return latencies


def test_one_tenants_upload_convoy_leaves_other_tenants_reads_fast(
    live_api: tuple[str, str, str],
) -> None:
    base_url, uploader, reader = live_api
    receiving, sending = multiprocessing.Pipe(duplex=False)
    convoy = multiprocessing.get_context("spawn").Process(
        target=run_convoy, args=(base_url, uploader, sending)
    )
    convoy.start()
    try:
        latencies = _read_until(base_url, reader, convoy)
        assert receiving.poll(10), "the convoy sent no result"
        uploads = receiving.recv()
    finally:
        convoy.kill()
        convoy.join()

    seen = Counter(status for statuses in uploads for status in statuses)
    assert not [s for s in seen if s >= 500], seen
    assert all(statuses[-1] == 200 for statuses in uploads), seen
    listed = httpx.get(
        f"{base_url}/v1/files?limit=100", headers={"Authorization": f"Bearer {uploader}"}
    ).json()
    assert len(listed["data"]) == UPLOADS

    p99 = statistics.quantiles(latencies, n=100)[98]
    assert len(latencies) >= 20, latencies
    print(
        f"reads: {len(latencies)}, p50 {statistics.median(latencies):.3f}s, p99 {p99:.3f}s, "
        f"max {max(latencies):.3f}s; uploads {dict(seen)}"
    )
    assert p99 < READ_P99_LIMIT_S, f"p99 {p99:.3f}s over {len(latencies)} reads; uploads {seen}"
