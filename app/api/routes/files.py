"""/v1/files: upload (streamed, capped, validated), list, retrieve, content, delete."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, Response

from app.api.deps import (
    AfterQuery,
    CurrentOrgDep,
    FileDep,
    SessionDep,
    SettingsDep,
    StorageDep,
    read_engine,
)
from app.api.object_response import stored_response
from app.api.presenters import file_page_json, file_public
from app.api.routes import ERROR_RESPONSES, disk_full_refused
from app.api.slots import OrganizationSlots
from app.errors import PayloadTooLarge
from app.schemas.common import NO_CONTROL_CHARACTERS, DeletedObject, ListPage
from app.schemas.files import UPLOAD_PURPOSES, ExpiresAfter, FilePublic
from app.services import files as file_service
from app.services.multipart import ENVELOPE_ALLOWANCE, receive_upload
from app.services.quotas import check_storage_room

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
                    "purpose": {
                        "type": "string",
                        "enum": sorted(UPLOAD_PURPOSES),
                        "description": "Only `fine-tune` files are validated as training data "
                        "and usable by jobs; the others are stored as they are",
                    },
                    "expires_after": {
                        **ExpiresAfter.model_json_schema(),
                        "description": "When the file expires (batch files: 30 days unless "
                        "given); also accepted as `expires_after[anchor]` and "
                        "`expires_after[seconds]` fields",
                    },
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
            with disk_full_refused("file"):
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
        finally:
            temp.unlink(missing_ok=True)
    return file_public(record)


# OpenAI's bounds and default: a whole listing fits one page unless the client asks for less.
MAX_FILES_PAGE = 10_000
FilesLimitQuery = Annotated[int, Query(ge=1, le=MAX_FILES_PAGE)]
OrderQuery = Annotated[
    Literal["asc", "desc"], Query(description="By creation time: `desc` (newest first) or `asc`")
]
PurposeQuery = Annotated[
    str | None,
    Query(
        max_length=64,
        pattern=NO_CONTROL_CHARACTERS,
        description="Only files of this purpose (`fine-tune`, `fine-tune-results`, `batch`...)",
    ),
]


@router.get("", response_model=ListPage[FilePublic])
async def read_files(
    request: Request,
    organization_id: CurrentOrgDep,
    after: AfterQuery = None,
    limit: FilesLimitQuery = MAX_FILES_PAGE,
    order: OrderQuery = "desc",
    purpose: PurposeQuery = None,
) -> Response:
    """The organization's files that have not expired, newest first unless `order=asc`."""
    async with read_engine(request).connect() as connection:
        rows, has_more = await connection.run_sync(
            file_service.list_files,
            organization_id,
            after=after,
            limit=limit,
            order=order,
            purpose=purpose,
        )
    return Response(file_page_json(rows, has_more), media_type="application/json")


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
