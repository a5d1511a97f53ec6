"""Uploaded files: validate (fine-tune ones), keep under a generated key, list, read, expire,
delete."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError
from sqlalchemy import ColumnElement, Connection, Row, and_, delete, or_, select
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.datasets import ValidationReport, validate_stream
from app.db.base import new_id, utcnow
from app.db.models import File
from app.errors import CursorNotFound, DatasetInvalid, FileNotFound, InvalidRequest
from app.schemas.files import (
    BATCH_DEFAULT_EXPIRES_AFTER_S,
    UPLOAD_PURPOSES,
    ExpiresAfter,
)
from app.services.multipart import ReceivedUpload
from app.services.quotas import check_storage
from app.storage import Storage

# The columns a file object is presented from: a page of thousands is read as plain rows.
FILE_COLUMNS = (
    File.id,
    File.bytes,
    File.created_at,
    File.filename,
    File.purpose,
    File.sha256,
    File.stats,
    File.expires_at,
)


@dataclass(frozen=True)
class NewFile:
    """What is known of a file before it is kept: from a form, or from a completed upload."""

    filename: str
    purpose: str
    bytes: int
    sha256: str
    expires_after_s: int | None


def storage_key(organization_id: str, file_id: str) -> str:
    return f"files/{organization_id}/{file_id}"


def is_live(now: datetime) -> ColumnElement[bool]:
    """The files that have not expired at `now`: the only ones listed or usable."""
    return or_(File.expires_at.is_(None), File.expires_at > now)


def check_purpose(purpose: str | None) -> str:
    if purpose not in UPLOAD_PURPOSES:
        raise InvalidRequest(
            f"purpose must be one of {', '.join(sorted(UPLOAD_PURPOSES))} (got {purpose!r})",
            param="purpose",
            code="invalid_purpose",
        )
    return purpose


def parse_expires_after(fields: dict[str, str]) -> ExpiresAfter | None:
    """expires_after from a form: one JSON part, or the SDK's expires_after[...] fields."""
    if "expires_after" in fields:
        try:
            raw: Any = json.loads(fields["expires_after"])
        except ValueError as exc:
            raise _invalid_expires_after("it is not JSON") from exc
    elif "expires_after[anchor]" in fields or "expires_after[seconds]" in fields:
        raw = {
            "anchor": fields.get("expires_after[anchor]"),
            "seconds": fields.get("expires_after[seconds]"),
        }
    else:
        return None
    try:
        return ExpiresAfter.model_validate(raw, strict=False)
    except ValidationError as exc:
        raise _invalid_expires_after(exc.errors()[0]["msg"]) from exc


def _invalid_expires_after(reason: str) -> InvalidRequest:
    return InvalidRequest(
        "expires_after must be {anchor: 'created_at', seconds: 3600 to 2592000}: " + reason,
        param="expires_after",
        code="invalid_expires_after",
    )


def expires_after_seconds(purpose: str, expires_after: ExpiresAfter | None) -> int | None:
    """The file's lifetime: the one asked for, else OpenAI's default (batch files, 30 days)."""
    if expires_after is not None:
        return expires_after.seconds
    return BATCH_DEFAULT_EXPIRES_AFTER_S if purpose == "batch" else None


def new_file_from_form(upload: ReceivedUpload) -> NewFile:
    """The file a `POST /v1/files` form describes, or 400 naming the field at fault."""
    purpose = check_purpose(upload.fields.get("purpose"))
    if upload.filename is None:
        raise InvalidRequest(
            "no file part named 'file' in the form", param="file", code="missing_file"
        )
    return NewFile(
        filename=upload.filename,
        purpose=purpose,
        bytes=upload.bytes,
        sha256=upload.sha256,
        expires_after_s=expires_after_seconds(purpose, parse_expires_after(upload.fields)),
    )


def store_upload(
    factory: sessionmaker[Session],
    storage: Storage,
    settings: Settings,
    *,
    organization_id: str,
    upload: ReceivedUpload,
    temp_path: Path,
) -> File:
    """Keep the file a `POST /v1/files` form sent (see `keep_file`)."""
    return keep_file(
        factory,
        storage,
        settings,
        organization_id=organization_id,
        new=new_file_from_form(upload),
        temp_path=temp_path,
    )


def keep_file(
    factory: sessionmaker[Session],
    storage: Storage,
    settings: Settings,
    *,
    organization_id: str,
    new: NewFile,
    temp_path: Path,
    also: Callable[[Session, File], None] | None = None,
) -> File:
    """Validate the bytes at `temp_path` (fine-tune files: as training data); keep them and
    record the file, or refuse. `also` writes more in the file's transaction (a completed
    upload), or raises to refuse it.

    A refused file leaves nothing behind: the caller deletes `temp_path` in every case. The
    bytes are stored before the organization is locked for the quota check, so the lock is
    held for one INSERT and its commit, never for a copy to a bucket.
    """
    stats = asdict(_validate(settings, temp_path).stats) if new.purpose == "fine-tune" else {}
    file_id = new_id("file")
    key = storage_key(organization_id, file_id)
    storage.commit(temp_path, key)
    now = utcnow()
    record = File(
        id=file_id,
        organization_id=organization_id,
        filename=new.filename,
        purpose=new.purpose,
        bytes=new.bytes,
        sha256=new.sha256,
        storage_key=key,
        stats=stats,
        created_at=now,
        expires_at=now + timedelta(seconds=new.expires_after_s) if new.expires_after_s else None,
    )
    # Closing the session rolls back in this same thread, whatever is raised.
    with factory() as session:
        try:
            check_storage(session, settings, organization_id, new.bytes)
            session.add(record)
            if also is not None:
                also(session, record)
            session.commit()
        except BaseException:
            session.rollback()
            storage.delete(key)
            raise
    return record


def _validate(settings: Settings, path: Path) -> ValidationReport:
    """The dataset's report, or DatasetInvalid naming the first problem (and the rest)."""
    with path.open("rb") as stream:
        report = validate_stream(
            stream,
            max_line_bytes=settings.max_line_bytes,
            min_examples=settings.min_training_examples,
        )
    if report.ok:
        return report
    first = report.problems[0]
    where = f"line {first.line}" if first.line else "file"
    more = report.problem_count - 1
    raise DatasetInvalid(
        f"{where}, {first.field}: {first.message}" + (f" (and {more} more)" if more else ""),
        param="file",
        code=first.code,
        extra={
            "problems": [asdict(problem) for problem in report.problems],
            "problem_count": report.problem_count,
        },
    )


def get_file(session: Session, organization_id: str, file_id: str) -> File:
    """The tenant's live file, or 404 (another tenant's id and an expired file included)."""
    record = session.scalar(
        select(File).where(
            File.id == file_id, File.organization_id == organization_id, is_live(utcnow())
        )
    )
    if record is None:
        raise FileNotFound(f"no file with id {file_id!r}", param="file_id")
    return record


def list_files(
    connection: Connection,
    organization_id: str,
    *,
    after: str | None,
    limit: int,
    order: Literal["asc", "desc"],
    purpose: str | None,
) -> tuple[list[Row[Any]], bool]:
    """One page of the tenant's live files as rows of FILE_COLUMNS, by (created_at, id) in
    `order`; `after` is the last id of the previous page. Returns (rows, has_more)."""
    now = utcnow()
    stmt = select(*FILE_COLUMNS).where(File.organization_id == organization_id, is_live(now))
    if purpose is not None:
        stmt = stmt.where(File.purpose == purpose)
    if after:
        anchor = connection.execute(
            select(File.created_at).where(File.id == after, File.organization_id == organization_id)
        ).scalar_one_or_none()
        if anchor is None:
            raise CursorNotFound(f"no file with id {after!r} to page after")
        if order == "desc":
            stmt = stmt.where(
                or_(File.created_at < anchor, and_(File.created_at == anchor, File.id < after))
            )
        else:
            stmt = stmt.where(
                or_(File.created_at > anchor, and_(File.created_at == anchor, File.id > after))
            )
    keys = (File.created_at, File.id)
    stmt = stmt.order_by(*(key.desc() if order == "desc" else key.asc() for key in keys))
    rows = list(connection.execute(stmt.limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def delete_file(session: Session, storage: Storage, record: File) -> None:
    session.delete(record)
    session.commit()
    storage.delete(record.storage_key)


def delete_expired_files(
    factory: sessionmaker[Session], storage: Storage, *, batch: int = 500
) -> int:
    """Delete files past their expires_at, rows first, then bytes; returns how many.

    Several API processes may sweep at once: each row is deleted by one of them (the DELETE's
    rowcount says which), and only that one removes the bytes.
    """
    removed = 0
    now = utcnow()
    with factory() as session:
        expired = session.execute(
            select(File.id, File.storage_key).where(File.expires_at <= now).limit(batch)
        ).all()
        for file_id, key in expired:
            deleted = session.execute(
                delete(File).where(File.id == file_id, File.expires_at <= now)
            )
            session.commit()
            if deleted.rowcount == 1:  # type: ignore[attr-defined]
                storage.delete(key)
                removed += 1
    return removed
