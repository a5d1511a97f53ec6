"""The OpenAI file object, plus the dataset statistics loraforge measures on upload."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field

from app.schemas.spec import WHOLE, StrictModel

# What a client may upload a file for (OpenAI's list); only fine-tune files are training data.
UploadPurpose = Literal["assistants", "batch", "fine-tune", "vision", "user_data", "evals"]
UPLOAD_PURPOSES: frozenset[str] = frozenset(UploadPurpose.__args__)  # type: ignore[attr-defined]
# What a file object may say: the uploaded purposes and the files the service writes.
FilePurpose = Literal[
    "assistants",
    "assistants_output",
    "batch",
    "batch_output",
    "fine-tune",
    "fine-tune-results",
    "vision",
    "user_data",
    "evals",
]
# OpenAI's bounds on expires_after.seconds: one hour to thirty days.
MIN_EXPIRES_AFTER_S = 3600
MAX_EXPIRES_AFTER_S = 30 * 24 * 3600
# OpenAI keeps batch files thirty days unless told otherwise; every other purpose, until deleted.
BATCH_DEFAULT_EXPIRES_AFTER_S = MAX_EXPIRES_AFTER_S


class ExpiresAfter(StrictModel):
    """OpenAI's expiration policy: the file expires `seconds` after it was created."""

    anchor: Literal["created_at"]
    seconds: Annotated[int, Field(ge=MIN_EXPIRES_AFTER_S, le=MAX_EXPIRES_AFTER_S), WHOLE]


class DatasetStatsPublic(BaseModel):
    examples: int
    # What the trainer reads: chat, prompt_completion or text.
    format: str | None
    characters: int
    messages: int
    # The format the lines were written in when they were converted to chat (alpaca,
    # sharegpt); null when they were not.
    converted_from: str | None = None
    # Examples with tools, tool calls or tool results.
    tool_examples: int = 0


class FilePublic(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: FilePurpose
    status: Literal["uploaded", "processed", "error"] = "processed"
    status_details: str | None = None
    expires_at: int | None = None
    # + loraforge
    sha256: str
    stats: DatasetStatsPublic | None = None
