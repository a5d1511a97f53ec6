"""What one busy organization or a busy database can do to a request: a bound on each
organization's uploads at once (429), a busy database answered 503 with Retry-After (never
500), a full disk answered 507, one key lookup for many requests at once, and the temp files
of killed uploads swept away."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Connection, create_engine, text

from app.api.keycache import KeyCache, Principal
from app.api.slots import OrganizationSlots, upload_slots
from app.config import Settings
from app.db import session as db_session
from app.db.session import is_contention
from app.errors import TooManyConcurrentUploads
from app.main import create_app
from app.services.housekeeping import STALE_PART_S
from app.storage import LocalStorage
from tests.conftest import RecordingEnqueuer, post_job, upload
from tests.factories import Tenant, chat_dataset, create_tenant
from tests.live import wait_for


def test_an_organizations_uploads_past_the_bound_are_refused_and_others_go_on(
    client: TestClient, tenant_a: Tenant, tenant_b: Tenant
):
    slots: OrganizationSlots = client.app.state.upload_slots  # type: ignore[attr-defined]
    with ExitStack() as held:
        for _ in range(slots.per_organization):  # as many uploads of A as it may send at once
            held.enter_context(slots.slot(tenant_a.organization_id))
        refused = upload(client, tenant_a, chat_dataset(12))
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["code"] == "too_many_concurrent_uploads"
        assert upload(client, tenant_b, chat_dataset(12)).status_code == 200
    assert slots.taken(tenant_a.organization_id) == 0
    assert upload(client, tenant_a, chat_dataset(12)).status_code == 200


def test_a_slot_is_given_back_whatever_ends_the_upload():
    slots = upload_slots(1)
    with pytest.raises(ValueError), slots.slot("org"):
        raise ValueError("the upload failed")
    # Free again, and still bounded.
    with slots.slot("org"), pytest.raises(TooManyConcurrentUploads), slots.slot("org"):
        pass
    with upload_slots(0).slot("org"), upload_slots(0).slot("org"):  # 0: no bound
        pass


@pytest.fixture
def locked_organization(database_url: str, tenant_a: Tenant) -> Iterator[Connection]:
    """A transaction elsewhere holding tenant A's organization row, as a slow writer would."""
    engine = create_engine(database_url)
    with engine.connect() as connection:
        connection.execute(
            text("SELECT id FROM organization WHERE id = :id FOR UPDATE"),
            {"id": tenant_a.organization_id},
        )
        yield connection
        connection.rollback()
    engine.dispose()


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_a_lock_not_granted_in_time_is_503_with_retry_after(
    settings: Settings, training_file: str, tenant_a: Tenant, locked_organization: Connection
):
    app = create_app(settings.model_copy(update={"lock_timeout_s": 0.5}), RecordingEnqueuer())
    with TestClient(app) as client:
        started = time.monotonic()
        response = post_job(client, tenant_a, training_file)
        assert time.monotonic() - started < 5
        assert response.status_code == 503, response.text
        assert response.headers["retry-after"] == "1"
        assert response.json()["error"]["code"] == "service_busy"
        locked_organization.rollback()
        assert post_job(client, tenant_a, training_file).status_code == 200


def test_no_free_connection_in_time_is_503_with_retry_after(
    monkeypatch: pytest.MonkeyPatch, settings: Settings, database_url: str
):
    monkeypatch.setattr(db_session, "POOL_TIMEOUT_S", 0.2)
    app = create_app(settings, RecordingEnqueuer())
    with TestClient(app) as client:
        tenant = create_tenant(app.state.session_factory, "acme")
        file_id = upload(client, tenant, chat_dataset(12)).json()["id"]
        engine = app.state.engine
        held = [engine.connect() for _ in range(db_session.POOL_SIZE + db_session.POOL_OVERFLOW)]
        try:
            response = client.get(f"/v1/files/{file_id}", headers=tenant.headers)
        finally:
            for connection in held:
                connection.close()
        assert response.status_code == 503, response.text
        assert response.headers["retry-after"] == "1"
        assert response.json()["error"]["code"] == "service_busy"
        assert client.get(f"/v1/files/{file_id}", headers=tenant.headers).status_code == 200


def test_a_broken_database_is_still_a_500(database_url: str):
    engine = create_engine(database_url)
    with engine.connect() as connection, pytest.raises(Exception) as raised:
        connection.execute(text("SELECT * FROM no_such_table"))
    engine.dispose()
    assert not is_contention(raised.value)


class DiskFullStorage(LocalStorage):
    """The data dir, except that uploads are staged on /dev/full: every write gets ENOSPC
    from the kernel, as on a full disk."""

    def temp_path(self, key: str) -> Path:
        link = super().temp_path(key)
        link.symlink_to("/dev/full")  # unlinking the temp file removes the link only
        return link


def test_an_upload_to_a_full_disk_is_507_and_keeps_nothing(
    client: TestClient, tenant_a: Tenant, settings: Settings
):
    client.app.state.storage = DiskFullStorage(settings.data_dir)  # type: ignore[attr-defined]
    response = upload(client, tenant_a, chat_dataset(200))
    assert response.status_code == 507, response.text
    assert response.json()["error"]["code"] == "insufficient_storage"
    assert client.get("/v1/files", headers=tenant_a.headers).json()["data"] == []
    assert [p for p in (settings.data_dir / "files").rglob("*") if not p.is_dir()] == []
    assert Path("/dev/full").exists()


def test_concurrent_requests_with_one_key_share_one_lookup():
    cache = KeyCache(5)
    calls = 0

    async def look_up() -> Principal | None:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        return Principal("key-1", "org-1")

    async def many() -> list[Principal | None]:
        return await asyncio.gather(*(cache.get_or_look_up("d", look_up) for _ in range(50)))

    assert asyncio.run(many()) == [Principal("key-1", "org-1")] * 50
    assert calls == 1
    assert cache.get("d") == Principal("key-1", "org-1")


def test_a_failed_lookup_reaches_every_waiter_and_is_not_remembered():
    cache = KeyCache(5)

    async def unknown() -> Principal | None:
        await asyncio.sleep(0.01)
        return None

    async def broken() -> Principal | None:
        raise ConnectionError("database down")

    async def run() -> None:
        assert (
            await asyncio.gather(*(cache.get_or_look_up("x", unknown) for _ in range(3)))
            == [None] * 3
        )
        with pytest.raises(ConnectionError):
            await cache.get_or_look_up("x", broken)

    asyncio.run(run())
    assert cache.get("x") is None


def test_the_temp_files_of_killed_uploads_are_swept_at_start(settings: Settings):
    folder = settings.data_dir / "files" / "org-1"
    folder.mkdir(parents=True)
    stale, fresh, kept = folder / ".upload.0a1b.part", folder / ".upload.2c3d.part", folder / "f"
    for path in (stale, fresh, kept):
        path.write_bytes(b"x" * 1024)
    long_ago = time.time() - STALE_PART_S - 60
    os.utime(stale, (long_ago, long_ago))
    with TestClient(create_app(settings, RecordingEnqueuer())):
        wait_for(lambda: not stale.exists(), 10, "the stale part to be swept")
        assert fresh.exists() and kept.exists()
