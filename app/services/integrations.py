"""Which tracking integrations this server can honour: those its operator configured."""

from __future__ import annotations

from typing import Any

from app.config import Settings
from app.errors import InvalidRequest
from app.schemas.integrations import Integration


def stored_integrations(
    settings: Settings, integrations: list[Integration] | None
) -> list[dict[str, Any]] | None:
    """The integrations as the job row keeps them; 400 for one the operator did not set up."""
    if not integrations:
        return None
    for index, integration in enumerate(integrations):
        configured = (
            settings.wandb_mode != "disabled"
            if integration.type == "wandb"
            else bool(settings.mlflow_tracking_uri)
        )
        if not configured:
            raise InvalidRequest(
                f"this server is not set up to log to {integration.type}",
                param=f"integrations.{index}",
                code="integration_not_configured",
            )
    return [integration.model_dump(mode="json", exclude_none=True) for integration in integrations]
