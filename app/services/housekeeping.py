"""What the API removes on its own, every few minutes (app/main.py runs `sweep`): temp files
of uploads a killed process left behind, files past their expires_at, and uploads past
theirs (an hour after creation, as OpenAI's), with the parts they had received."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from app.services.files import delete_expired_files
from app.services.uploads import expire_uploads
from app.storage import Storage

log = logging.getLogger(__name__)

# A live upload writes its temp file every few milliseconds; one idle this long was abandoned.
STALE_PART_S = 3600.0


@dataclass(frozen=True)
class Swept:
    temp_files: int = 0
    expired_files: int = 0
    expired_uploads: int = 0


def sweep(factory: sessionmaker[Session], storage: Storage) -> Swept:
    """One pass; a failing step is logged and the others still run."""
    temp_files = expired_files = expired_uploads = 0
    try:
        temp_files = len(storage.remove_stale_parts(STALE_PART_S))
    except OSError:
        log.warning("sweeping abandoned upload temp files failed", exc_info=True)
    try:
        expired_files = delete_expired_files(factory, storage)
        expired_uploads = expire_uploads(factory, storage)
    except (OSError, SQLAlchemyError):
        log.warning("sweeping expired files and uploads failed", exc_info=True)
    swept = Swept(temp_files, expired_files, expired_uploads)
    if swept != Swept():
        log.info(
            "removed %d abandoned temp files, %d expired files, %d expired uploads",
            temp_files,
            expired_files,
            expired_uploads,
        )
    return swept
