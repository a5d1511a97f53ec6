"""Chat and completions: which base and adapter a tenant's model name means, and the inference
server that generates for it (loraforge's own or vLLM, spoken to in one protocol).

The API never generates. It resolves `model` to (base, adapter), forwards the request to the
server configured for that base, and when the server answers 404 for an adapter it has not
loaded (never loaded, or evicted from its LRU) asks it to load the adapter, then retries once.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import httpx
from sqlalchemy import Connection, select

from app.config import Settings
from app.db.models import Checkpoint, Job
from app.errors import AdapterUnavailable, NotFound, Unavailable
from app.observability.logs import context_fields
from app.services.downloads import checkpoint_adapter_prefix
from app.storage import Storage

log = logging.getLogger(__name__)

CHAT_PATH = "/v1/chat/completions"
COMPLETIONS_PATH = "/v1/completions"
LOAD_ADAPTER_PATH = "/v1/load_lora_adapter"


@dataclass(frozen=True)
class Target:
    """Where a request's model runs: its base, and the adapter on it (None for a base)."""

    base: str
    adapter: str | None = None
    adapter_key: str | None = None
    checkpoint: bool = False


def model_not_found(model: str) -> NotFound:
    # Another organization's model reads exactly like one that does not exist.
    return NotFound(f"The model `{model}` does not exist", param="model", code="model_not_found")


def resolve_model(
    connection: Connection, settings: Settings, organization_id: str, model: str
) -> Target:
    """A catalog base, the organization's fine-tuned model, or one of its checkpoints."""
    if model in settings.catalog():
        return Target(model)
    job = connection.execute(
        select(Job.id, Job.model).where(
            Job.organization_id == organization_id,
            Job.fine_tuned_model == model,
            Job.status == "succeeded",
            Job.model_deleted_at.is_(None),
        )
    ).first()
    if job is not None:
        return Target(job.model, model, f"jobs/{job.id}/adapter")
    checkpoint = connection.execute(
        select(Job.model, Checkpoint.storage_key)
        .join(Job, Job.id == Checkpoint.job_id)
        .where(
            Checkpoint.organization_id == organization_id,
            Checkpoint.fine_tuned_model_checkpoint == model,
            Job.model_deleted_at.is_(None),
        )
    ).first()
    if checkpoint is not None:
        return Target(checkpoint.model, model, checkpoint.storage_key, checkpoint=True)
    raise model_not_found(model)


class InferenceBackends:
    """The inference servers, one per base model (or the default one), over one client."""

    def __init__(self, settings: Settings, storage: Storage, client: httpx.AsyncClient) -> None:
        self.settings = settings
        self.storage = storage
        self.client = client
        key = settings.inference_api_key
        self.headers = {"Authorization": f"Bearer {key.get_secret_value()}"} if key else {}

    def url_for(self, base: str) -> str:
        url = self.settings.inference_backends.get(base) or self.settings.inference_url
        if not url:
            raise Unavailable(
                f"no inference server is configured for {base!r}",
                param="model",
                code="inference_unavailable",
            )
        return url.rstrip("/")

    async def send(self, target: Target, path: str, body: dict[str, Any]) -> httpx.Response:
        """POST `body` for `target` and return the open response (stream it, then close it);
        an adapter the server lacks is loaded and the request sent once more."""
        url = self.url_for(target.base)
        body = {**body, "model": target.adapter or target.base}
        response = await self._post(url + path, body)
        if response.status_code != 404 or target.adapter is None:
            return response
        await response.aclose()
        refusal = await self.load_adapter(url, target)
        response = await self._post(url + path, body)
        if response.status_code == 404 and refusal is not None:
            await response.aclose()
            log.error("loading %s on %s failed: %s", target.adapter, url, refusal)
            raise AdapterUnavailable(
                f"the model `{target.adapter}` could not be loaded by its inference server",
                param="model",
            )
        return response

    async def load_adapter(self, url: str, target: Target) -> str | None:
        """Ask the server to load the target's adapter (vLLM's runtime LoRA loading); what
        the server answered when it refused, else None."""
        assert target.adapter is not None and target.adapter_key is not None
        key = target.adapter_key
        if target.checkpoint:
            key = await asyncio.to_thread(checkpoint_adapter_prefix, self.storage, key)
        local = self.storage.local_path(key)
        # A shared disk: the path (vLLM reads it there); a bucket: the key, which
        # `loraforge inference` fetches into its cache.
        lora_path = str(local.resolve()) if local is not None else key
        body = {"lora_name": target.adapter, "lora_path": lora_path}
        response = await self._post(url + LOAD_ADAPTER_PATH, body)
        text = (await response.aread()).decode(errors="replace")
        await response.aclose()
        # A refusal may only mean a concurrent request loaded it first (vLLM answers 400
        # then): the retry decides.
        return f"{response.status_code} {text}" if response.status_code >= 400 else None

    async def _post(self, url: str, body: dict[str, Any]) -> httpx.Response:
        # The API request's id goes along, so the inference server's records carry it too.
        request_id = context_fields().get("request_id")
        headers = {**self.headers, "X-Request-ID": request_id} if request_id else self.headers
        request = self.client.build_request("POST", url, json=body, headers=headers)
        try:
            return await self.client.send(request, stream=True)
        except httpx.TransportError as exc:
            log.warning("inference server %s: %s", url, exc)
            raise Unavailable(
                "the inference server is not reachable; try again shortly",
                code="inference_unavailable",
            ) from exc
