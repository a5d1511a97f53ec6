"""The OpenAI file object, plus the dataset statistics loraforge measures on upload."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

FilePurpose = Literal["fine-tune", "fine-tune-results"]


class DatasetStatsPublic(BaseModel):
    examples: int
    format: str | None
    characters: int
    messages: int


class FilePublic(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: FilePurpose
    status: Literal["processed"] = "processed"
    status_details: str | None = None
    sha256: str
    stats: DatasetStatsPublic | None = None
