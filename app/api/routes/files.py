"""/v1/files: upload (streamed, capped, validated), list, retrieve, content, delete."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, Response

from app.api.deps import (
    AfterQuery,
    CurrentOrgDep,
    FileDep,
    LimitQuery,
    SessionDep,
    SettingsDep,
    StorageDep,
    read_engine,
    read_sessions,
)
from app.api.object_response import stored_response
from app.api.presenters import file_public
from app.api.routes import ERROR_RESPONSES
from app.api.slots import OrganizationSlots
from app.errors import InsufficientStorage, PayloadTooLarge
from app.schemas.common import DeletedObject, ListPage
from app.schemas.files import FilePublic, FilePurpose
from app.services import files as file_service
from app.services.quotas import check_storage_room
from app.services.uploads import ENVELOPE_ALLOWANCE, receive_upload
from app.storage import is_disk_full

router = APIRouter(prefix="/v1/files", tags=["files"], responses=ERROR_RESPONSES)

UPLOAD_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["file", "purpose"],
                "properties": {
                    "file": {"type": "string", "format": "binary"},
                    "purpose": {"type": "string", "enum": ["fine-tune"]},
                },
            }
        }
    },
}


@router.post("", openapi_extra={"requestBody": UPLOAD_BODY})
async def create_file(
    request: Request,
    organization_id: CurrentOrgDep,
    settings: SettingsDep,
    storage: StorageDep,
) -> FilePublic:
    """Upload a JSONL dataset; every line is validated before the file is kept."""
    declared = request.headers.get("content-length")
    if (
        declared
        and declared.isdigit()
        and (int(declared) > settings.max_upload_bytes + ENVELOPE_ALLOWANCE)
    ):
        raise PayloadTooLarge(
            f"the upload is over the {settings.max_upload_bytes} byte limit", param="file"
        )
    upload_slots: OrganizationSlots = request.app.state.upload_slots
    with upload_slots.slot(organization_id):
        # Full already? Say so before reading the body. This read takes no lock: the check
        # that binds runs again, locked, where the file is recorded.
        async with read_engine(request).connect() as connection:
            await connection.run_sync(check_storage_room, settings, organization_id, 0)
        temp = storage.temp_path(file_service.storage_key(organization_id, "upload"))
        try:
            upload = await receive_upload(
                request.stream(),
                request.headers.get("content-type"),
                temp,
                settings.max_upload_bytes,
            )
            record = await run_in_threadpool(
                file_service.store_upload,
                request.app.state.session_factory,
                storage,
                settings,
                organization_id=organization_id,
                upload=upload,
                temp_path=temp,
            )
        except OSError as error:
            if is_disk_full(error):
                raise InsufficientStorage(
                    "the server's disk is full; nothing was kept. Try again later",
                    param="file",
                ) from error
            raise
        finally:
            temp.unlink(missing_ok=True)
    return file_public(record)


@router.get("")
async def read_files(
    request: Request,
    organization_id: CurrentOrgDep,
    after: AfterQuery = None,
    limit: LimitQuery = 20,
    purpose: FilePurpose | None = None,
) -> ListPage[FilePublic]:
    """The organization's files, newest first."""
    async with read_sessions(request)() as session:
        rows, has_more = await session.run_sync(
            file_service.list_files, organization_id, after=after, limit=limit, purpose=purpose
        )
    return ListPage[FilePublic].of([file_public(r) for r in rows], has_more)


@router.get("/{file_id}")
async def read_file(record: FileDep) -> FilePublic:
    return file_public(record)


@router.get(
    "/{file_id}/content",
    response_class=FileResponse,
    responses={200: {"content": {"application/octet-stream": {}}}},
)
def read_file_content(record: FileDep, storage: StorageDep) -> Response:
    """The file's bytes, streamed (Range requests supported)."""
    return stored_response(
        storage, record.storage_key, media_type="application/octet-stream", filename=record.filename
    )


@router.delete("/{file_id}")
def delete_file(record: FileDep, session: SessionDep, storage: StorageDep) -> DeletedObject:
    file_service.delete_file(session, storage, record)
    return DeletedObject(id=record.id, object="file", deleted=True)
