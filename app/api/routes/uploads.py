"""/v1/uploads: OpenAI's Uploads API, a file sent in parts (what the openai SDK uses past the
single-request limit): create, add a part, complete (the file is validated and kept), cancel.

Parts and completions take one of the organization's upload slots, as `POST /v1/files` does:
each holds a thread while bytes move.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool

from app.api.deps import (
    CurrentOrgDep,
    SessionDep,
    SettingsDep,
    StorageDep,
    UploadIdDep,
    UploadIdPath,
    read_engine,
    write_session,
)
from app.api.presenters import upload_part_public, upload_public
from app.api.routes import ERROR_RESPONSES, disk_full_refused
from app.api.slots import OrganizationSlots
from app.errors import PayloadTooLarge
from app.schemas.uploads import UploadComplete, UploadCreate, UploadPartPublic, UploadPublic
from app.services import uploads as upload_service
from app.services.files import storage_key
from app.services.multipart import ENVELOPE_ALLOWANCE, receive_upload

router = APIRouter(prefix="/v1/uploads", tags=["uploads"], responses=ERROR_RESPONSES)

PART_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["data"],
                "properties": {"data": {"type": "string", "format": "binary"}},
            }
        }
    },
}


@router.post("")
async def create_upload(
    request: Request, body: UploadCreate, organization_id: CurrentOrgDep, settings: SettingsDep
) -> UploadPublic:
    """An upload of `bytes` bytes, to send in parts within the hour and then complete."""
    async with write_session(request) as session:
        upload = await session.run_sync(
            upload_service.create_upload, settings, organization_id, body
        )
    return upload_public(upload)


@router.post("/{upload_id}/parts", openapi_extra={"requestBody": PART_BODY})
async def create_upload_part(
    request: Request,
    upload_id: UploadIdPath,
    organization_id: CurrentOrgDep,
    settings: SettingsDep,
    storage: StorageDep,
) -> UploadPartPublic:
    """One part (multipart field `data`, at most LORAFORGE_MAX_UPLOAD_PART_BYTES), stored as
    it arrives; parts may be sent in any order, and at once."""
    cap = min(settings.max_upload_part_bytes, settings.max_upload_bytes)
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > cap + ENVELOPE_ALLOWANCE:
        raise PayloadTooLarge(f"a part may hold at most {cap} bytes", param="data")
    upload_slots: OrganizationSlots = request.app.state.upload_slots
    with upload_slots.slot(organization_id):
        async with read_engine(request).connect() as connection:
            await connection.run_sync(upload_service.check_part_target, organization_id, upload_id)
        temp = storage.temp_path(f"{upload_service.parts_prefix(organization_id, upload_id)}/part")
        try:
            with disk_full_refused("data"):
                received = await receive_upload(
                    request.stream(),
                    request.headers.get("content-type"),
                    temp,
                    cap,
                    file_field="data",
                    fields=upload_service.PART_FORM,
                )
                part = await run_in_threadpool(
                    upload_service.add_part,
                    request.app.state.session_factory,
                    storage,
                    organization_id=organization_id,
                    upload_id=upload_id,
                    received=received,
                    temp_path=temp,
                )
        finally:
            temp.unlink(missing_ok=True)
    return upload_part_public(part)


@router.post("/{upload_id}/complete")
async def complete_upload(
    request: Request,
    upload_id: UploadIdDep,
    body: UploadComplete,
    organization_id: CurrentOrgDep,
    settings: SettingsDep,
    storage: StorageDep,
) -> UploadPublic:
    """Join the parts in the order of `part_ids` (their bytes must add up to the upload's),
    check `md5` if given, and keep the whole as a file: validated as `POST /v1/files`
    validates, with the same errors."""
    upload_slots: OrganizationSlots = request.app.state.upload_slots
    with upload_slots.slot(organization_id):
        temp = storage.temp_path(storage_key(organization_id, "upload"))
        try:
            with disk_full_refused("part_ids"):
                upload, file = await run_in_threadpool(
                    upload_service.complete_upload,
                    request.app.state.session_factory,
                    storage,
                    settings,
                    organization_id=organization_id,
                    upload_id=upload_id,
                    body=body,
                    temp_path=temp,
                )
        finally:
            temp.unlink(missing_ok=True)
    return upload_public(upload, file)


@router.post("/{upload_id}/cancel")
def cancel_upload(
    upload_id: UploadIdPath,
    organization_id: CurrentOrgDep,
    session: SessionDep,
    storage: StorageDep,
) -> UploadPublic:
    """Cancel a pending upload; its parts are deleted."""
    upload = upload_service.get_upload(session, organization_id, upload_id)
    return upload_public(upload_service.cancel_upload(session, storage, upload))
