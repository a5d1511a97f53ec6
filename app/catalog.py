"""The base-model catalog the operator controls: name -> where the weights are.

The built-in `loraforge/tiny-random-llama` needs no download: the worker generates it
deterministically on first use, so every flow runs offline, in tests and on a laptop.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, model_validator

TINY_RANDOM_LLAMA = "loraforge/tiny-random-llama"


class CatalogEntry(BaseModel):
    """One base model. Exactly one of `path` (a local directory) or `hub_id` is set,
    except for built-ins, which the worker generates."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    path: str | None = None
    hub_id: str | None = None
    # A pinned commit or tag: a moving branch would make jobs unreproducible.
    revision: str | None = None
    trust_remote_code: bool = False
    builtin: bool = False
    description: str = ""
    owned_by: str = "loraforge"

    @model_validator(mode="after")
    def _one_source(self) -> CatalogEntry:
        sources = [s for s in (self.path, self.hub_id) if s]
        if self.builtin and sources:
            raise ValueError(f"built-in model {self.id} takes no path or hub_id")
        if not self.builtin and len(sources) != 1:
            raise ValueError(f"model {self.id}: set exactly one of path or hub_id")
        return self

    @property
    def base_model_name(self) -> str:
        """The base as downloads name it: the hub id for a hub model, else the catalog id;
        never a directory on the server (the revision goes beside it)."""
        return self.hub_id or self.id

    @property
    def source(self) -> str:
        """Where the worker gets the weights: "builtin", "hub" or "path"."""
        return "builtin" if self.builtin else "hub" if self.hub_id else "path"


BUILTIN_MODELS: tuple[CatalogEntry, ...] = (
    CatalogEntry(
        id=TINY_RANDOM_LLAMA,
        builtin=True,
        description="A tiny Llama with random weights, generated locally; for tests and demos.",
    ),
)


def build_catalog(configured: dict[str, dict[str, object]]) -> dict[str, CatalogEntry]:
    """Merge the built-ins with the operator's entries (which may not shadow a built-in)."""
    catalog = {entry.id: entry for entry in BUILTIN_MODELS}
    for model_id, fields in configured.items():
        if model_id in catalog:
            raise ValueError(f"{model_id} is a built-in model and cannot be redefined")
        catalog[model_id] = CatalogEntry.model_validate({**fields, "id": model_id})
    return catalog
