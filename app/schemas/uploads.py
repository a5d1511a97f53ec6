"""OpenAI's Upload and Upload Part objects, and the requests that create and complete them."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field, field_validator

from app.schemas.files import ExpiresAfter, FilePublic, UploadPurpose
from app.schemas.spec import WHOLE, StrictModel

UploadStatus = Literal["pending", "completed", "cancelled", "expired"]


class UploadCreate(StrictModel):
    filename: Annotated[str, Field(min_length=1, max_length=255)]
    purpose: UploadPurpose
    # The file's exact size: the parts must add up to it. Past the server's upload cap, 413.
    bytes: Annotated[int, Field(ge=0), WHOLE]
    mime_type: Annotated[str, Field(min_length=1, max_length=255)]
    expires_after: ExpiresAfter | None = None

    @field_validator("filename", "mime_type")
    @classmethod
    def _no_control_characters(cls, value: str) -> str:
        # Display-only, but stored: PostgreSQL refuses NUL, and no name needs the others.
        return "".join("_" if ord(c) < 32 or ord(c) == 127 else c for c in value)


class UploadComplete(StrictModel):
    # The parts in the order their bytes make the file; each part at most once.
    part_ids: Annotated[list[Annotated[str, Field(max_length=64)]], Field(max_length=10_000)]
    md5: Annotated[str, Field(max_length=64)] | None = None


class UploadPublic(BaseModel):
    id: str
    object: Literal["upload"] = "upload"
    bytes: int
    created_at: int
    expires_at: int
    filename: str
    purpose: str
    status: UploadStatus
    file: FilePublic | None = None


class UploadPartPublic(BaseModel):
    id: str
    object: Literal["upload.part"] = "upload.part"
    created_at: int
    upload_id: str
