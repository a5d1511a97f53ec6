"""Uploaded datasets: validate, keep under a generated key, list, read, delete."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.datasets import ValidationReport, validate_stream
from app.db.base import new_id
from app.db.models import File
from app.errors import DatasetInvalid, FileNotFound, InvalidRequest
from app.services.pagination import page_by_created
from app.services.quotas import check_storage
from app.services.uploads import ReceivedUpload
from app.storage import Storage

UPLOAD_PURPOSES = frozenset({"fine-tune"})


def storage_key(organization_id: str, file_id: str) -> str:
    return f"files/{organization_id}/{file_id}"


def check_purpose(purpose: str | None) -> str:
    if purpose not in UPLOAD_PURPOSES:
        raise InvalidRequest(
            f"purpose must be 'fine-tune' (got {purpose!r})",
            param="purpose",
            code="invalid_purpose",
        )
    return purpose


def store_upload(
    factory: sessionmaker[Session],
    storage: Storage,
    settings: Settings,
    *,
    organization_id: str,
    upload: ReceivedUpload,
    temp_path: Path,
) -> File:
    """Validate the uploaded bytes at `temp_path`; keep them and record the file, or refuse.

    A refused file leaves nothing behind: the caller deletes `temp_path` in every case. The
    bytes are stored before the organization is locked for the quota check, so the lock is
    held for one INSERT and its commit, never for a copy to a bucket.
    """
    purpose = check_purpose(upload.fields.get("purpose"))
    if upload.filename is None:
        raise InvalidRequest(
            "no file part named 'file' in the form", param="file", code="missing_file"
        )
    report = _validate(settings, temp_path)
    file_id = new_id("file")
    key = storage_key(organization_id, file_id)
    storage.commit(temp_path, key)
    record = File(
        id=file_id,
        organization_id=organization_id,
        filename=upload.filename,
        purpose=purpose,
        bytes=upload.bytes,
        sha256=upload.sha256,
        storage_key=key,
        stats=asdict(report.stats),
    )
    # Closing the session rolls back in this same thread, whatever is raised.
    with factory() as session:
        try:
            check_storage(session, settings, organization_id, upload.bytes)
            session.add(record)
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
    """The tenant's file, or 404 (another tenant's id included)."""
    record = session.scalar(
        select(File).where(File.id == file_id, File.organization_id == organization_id)
    )
    if record is None:
        raise FileNotFound(f"no file with id {file_id!r}", param="file_id")
    return record


def list_files(
    session: Session, organization_id: str, *, after: str | None, limit: int, purpose: str | None
) -> tuple[list[File], bool]:
    stmt = select(File).where(File.organization_id == organization_id)
    if purpose is not None:
        stmt = stmt.where(File.purpose == purpose)
    return page_by_created(
        session, File, stmt, organization_id=organization_id, after=after, limit=limit
    )


def delete_file(session: Session, storage: Storage, record: File) -> None:
    session.delete(record)
    session.commit()
    storage.delete(record.storage_key)
