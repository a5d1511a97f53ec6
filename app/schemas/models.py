"""The OpenAI model object: base models from the catalog and fine-tuned ones."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel


class ModelPublic(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    # + loraforge: "base" for catalog models, "fine-tuned" for a tenant's adapters.
    kind: Literal["base", "fine-tuned"]
    description: str | None = None
    parent: str | None = None
