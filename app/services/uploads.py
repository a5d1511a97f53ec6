"""OpenAI's Uploads API: a file sent in parts, assembled, validated and kept as a File once
complete.

Each part is streamed to a temp file under the part cap and stored as it arrives; completing
streams the parts, in the order the client names them, into one temp file that goes through
the same validation and quota check as `POST /v1/files`. Row locks last one short
transaction each (see app/services/quotas.py): the upload's row is locked only to add a part
or to record the completion, never while bytes move.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import Connection, delete, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db.base import new_id, utcnow
from app.db.models import File, Upload, UploadPart
from app.errors import (
    InvalidRequest,
    InvalidUploadState,
    UploadNotFound,
)
from app.schemas.uploads import UploadComplete, UploadCreate
from app.services.files import NewFile, expires_after_seconds, keep_file
from app.services.multipart import ReceivedUpload
from app.services.quotas import check_storage_room
from app.storage import Storage

# OpenAI's: an upload not completed within the hour expires, and its parts are deleted.
UPLOAD_LIFETIME_S = 3600
PART_FORM = frozenset({"data"})


def parts_prefix(organization_id: str, upload_id: str) -> str:
    return f"uploads/{organization_id}/{upload_id}"


def status_of(status: str, expires_at: datetime) -> str:
    """An upload's status as the client sees it: a pending one past expires_at has expired,
    whether or not the sweep has marked it yet."""
    return "expired" if status == "pending" and expires_at <= utcnow() else status


def _pending_bytes(connection: Connection, organization_id: str) -> int:
    """Bytes the organization's pending uploads announced: room they may still take."""
    total = connection.execute(
        select(func.coalesce(func.sum(Upload.bytes), 0)).where(
            Upload.organization_id == organization_id,
            Upload.status == "pending",
            Upload.expires_at > utcnow(),
        )
    ).scalar()
    return int(total or 0)


def create_upload(
    session: Session, settings: Settings, organization_id: str, body: UploadCreate
) -> Upload:
    """A pending upload of `body.bytes` bytes; 400 past the upload cap (the schema's maximum),
    429 past the organization's storage quota (counting its other pending uploads)."""
    if body.bytes > settings.max_upload_bytes:
        raise InvalidRequest(
            f"an upload may hold at most {settings.max_upload_bytes} bytes",
            param="bytes",
            code="file_too_large",
        )
    connection = session.connection()
    check_storage_room(
        connection,
        settings,
        organization_id,
        body.bytes + _pending_bytes(connection, organization_id),
    )
    now = utcnow()
    upload = Upload(
        id=new_id("upload"),
        organization_id=organization_id,
        filename=body.filename,
        purpose=body.purpose,
        bytes=body.bytes,
        mime_type=body.mime_type,
        status="pending",
        file_expires_after_s=expires_after_seconds(body.purpose, body.expires_after),
        created_at=now,
        expires_at=now + timedelta(seconds=UPLOAD_LIFETIME_S),
    )
    session.add(upload)
    session.commit()
    return upload


def get_upload(session: Session, organization_id: str, upload_id: str) -> Upload:
    """The tenant's upload, or 404 (another tenant's id included)."""
    found = session.scalar(
        select(Upload).where(Upload.id == upload_id, Upload.organization_id == organization_id)
    )
    if found is None:
        raise _not_found(upload_id)
    return found


def require_upload(connection: Connection, organization_id: str, upload_id: str) -> None:
    """404 unless the tenant has this upload; a read of its id only."""
    found = connection.execute(
        select(Upload.id).where(Upload.id == upload_id, Upload.organization_id == organization_id)
    ).first()
    if found is None:
        raise _not_found(upload_id)


def _not_found(upload_id: str) -> UploadNotFound:
    return UploadNotFound(f"no upload with id {upload_id!r}", param="upload_id")


def require_pending(status: str, expires_at: datetime, action: str) -> None:
    status = status_of(status, expires_at)
    if status != "pending":
        raise InvalidUploadState(f"cannot {action} an upload that is {status}", param="upload_id")


def check_part_target(connection: Connection, organization_id: str, upload_id: str) -> None:
    """Before a part's body is read: the upload exists and is pending. No lock: `add_part`
    checks again, locked, with the room the upload has left."""
    upload = connection.execute(
        select(Upload.status, Upload.expires_at).where(
            Upload.id == upload_id, Upload.organization_id == organization_id
        )
    ).first()
    if upload is None:
        raise _not_found(upload_id)
    require_pending(upload.status, upload.expires_at, "add a part to")


def add_part(
    factory: sessionmaker[Session],
    storage: Storage,
    *,
    organization_id: str,
    upload_id: str,
    received: ReceivedUpload,
    temp_path: Path,
) -> UploadPart:
    """Store a received part's bytes, then record the part: the upload is locked for one
    SELECT, one INSERT and the commit. Refused parts leave nothing (the caller deletes
    `temp_path` in every case)."""
    if received.filename is None:
        raise InvalidRequest(
            "no file part named 'data' in the form", param="data", code="missing_data"
        )
    part_id = new_id("part")
    key = f"{parts_prefix(organization_id, upload_id)}/{part_id}"
    storage.commit(temp_path, key)
    with factory() as session:
        try:
            upload = session.scalar(
                select(Upload)
                .where(Upload.id == upload_id, Upload.organization_id == organization_id)
                .with_for_update()
            )
            if upload is None:
                raise _not_found(upload_id)
            require_pending(upload.status, upload.expires_at, "add a part to")
            _check_room(session, upload, received.bytes)
            part = UploadPart(
                id=part_id,
                upload_id=upload_id,
                organization_id=organization_id,
                bytes=received.bytes,
                storage_key=key,
                created_at=utcnow(),
            )
            session.add(part)
            session.commit()
        except BaseException:
            session.rollback()
            storage.delete(key)
            raise
    return part


def _check_room(session: Session, upload: Upload, incoming: int) -> None:
    received = session.scalar(
        select(func.coalesce(func.sum(UploadPart.bytes), 0)).where(
            UploadPart.upload_id == upload.id
        )
    )
    if int(received or 0) + incoming > upload.bytes:
        raise InvalidRequest(
            f"this part would bring the upload to {int(received or 0) + incoming} bytes; it "
            f"was created for {upload.bytes}",
            param="data",
            code="upload_too_large",
        )


def complete_upload(
    factory: sessionmaker[Session],
    storage: Storage,
    settings: Settings,
    *,
    organization_id: str,
    upload_id: str,
    body: UploadComplete,
    temp_path: Path,
) -> tuple[Upload, File]:
    """Assemble the named parts into `temp_path`, keep them as a file (validated as `POST
    /v1/files` validates), and mark the upload completed in the file's transaction."""
    with factory() as session:
        upload = get_upload(session, organization_id, upload_id)
        require_pending(upload.status, upload.expires_at, "complete")
        parts = _named_parts(session, upload, body.part_ids)
        session.expunge(upload)
    size, sha256, md5 = _assemble(storage, parts, temp_path)
    if body.md5 is not None and body.md5.lower() != md5:
        raise InvalidRequest(
            f"the parts' md5 is {md5}, not {body.md5}", param="md5", code="md5_mismatch"
        )
    new = NewFile(
        filename=upload.filename,
        purpose=upload.purpose,
        bytes=size,
        sha256=sha256,
        expires_after_s=upload.file_expires_after_s,
    )

    def mark_completed(session: Session, file: File) -> None:
        changed = session.execute(
            update(Upload)
            .where(Upload.id == upload_id, Upload.status == "pending")
            .values(status="completed", file_id=file.id)
        )
        if changed.rowcount != 1:  # type: ignore[attr-defined]
            raise InvalidUploadState(
                "the upload was completed or cancelled meanwhile", param="upload_id"
            )
        session.execute(delete(UploadPart).where(UploadPart.upload_id == upload_id))

    file = keep_file(
        factory,
        storage,
        settings,
        organization_id=organization_id,
        new=new,
        temp_path=temp_path,
        also=mark_completed,
    )
    storage.delete_prefix(parts_prefix(organization_id, upload_id))
    upload.status, upload.file_id = "completed", file.id
    return upload, file


def _named_parts(session: Session, upload: Upload, part_ids: list[str]) -> list[UploadPart]:
    """The parts `part_ids` names, in that order; 400 for an unknown or repeated id, or when
    they do not add up to the bytes the upload was created for."""
    if len(set(part_ids)) != len(part_ids):
        raise InvalidRequest("part_ids names a part twice", param="part_ids", code="duplicate_part")
    found = {
        part.id: part
        for part in session.scalars(select(UploadPart).where(UploadPart.upload_id == upload.id))
    }
    unknown = [part_id for part_id in part_ids if part_id not in found]
    if unknown:
        raise InvalidRequest(
            f"no part {unknown[0]!r} on this upload", param="part_ids", code="part_not_found"
        )
    parts = [found[part_id] for part_id in part_ids]
    total = sum(part.bytes for part in parts)
    if total != upload.bytes:
        raise InvalidRequest(
            f"the parts hold {total} bytes; the upload was created for {upload.bytes}",
            param="part_ids",
            code="upload_size_mismatch",
        )
    for part in parts:
        session.expunge(part)
    return parts


def _assemble(storage: Storage, parts: list[UploadPart], target: Path) -> tuple[int, str, str]:
    """Stream the parts into `target`; returns (bytes, sha256, md5) of the whole."""
    sha256, md5, size = hashlib.sha256(), hashlib.md5(usedforsecurity=False), 0
    with target.open("wb") as sink:
        for part in parts:
            for chunk in storage.iter_bytes(part.storage_key):
                sink.write(chunk)
                sha256.update(chunk)
                md5.update(chunk)
                size += len(chunk)
    return size, sha256.hexdigest(), md5.hexdigest()


def cancel_upload(session: Session, storage: Storage, upload: Upload) -> Upload:
    """A pending upload is cancelled and its parts deleted; cancelling twice is no error."""
    if upload.status == "cancelled":
        return upload
    require_pending(upload.status, upload.expires_at, "cancel")
    changed = session.execute(
        update(Upload)
        .where(Upload.id == upload.id, Upload.status == "pending")
        .values(status="cancelled")
    )
    if changed.rowcount != 1:  # type: ignore[attr-defined]
        session.rollback()
        raise InvalidUploadState("the upload was completed meanwhile", param="upload_id")
    session.execute(delete(UploadPart).where(UploadPart.upload_id == upload.id))
    session.commit()
    session.refresh(upload)
    storage.delete_prefix(parts_prefix(upload.organization_id, upload.id))
    return upload


def expire_uploads(factory: sessionmaker[Session], storage: Storage, *, batch: int = 500) -> int:
    """Mark pending uploads past their hour expired and delete their parts; returns how many."""
    now = utcnow()
    expired = 0
    with factory() as session:
        due = session.execute(
            select(Upload.id, Upload.organization_id)
            .where(Upload.status == "pending", Upload.expires_at <= now)
            .limit(batch)
        ).all()
        for upload_id, organization_id in due:
            changed = session.execute(
                update(Upload)
                .where(Upload.id == upload_id, Upload.status == "pending")
                .values(status="expired")
            )
            session.execute(delete(UploadPart).where(UploadPart.upload_id == upload_id))
            session.commit()
            if changed.rowcount == 1:  # type: ignore[attr-defined]
                storage.delete_prefix(parts_prefix(organization_id, upload_id))
                expired += 1
    return expired
