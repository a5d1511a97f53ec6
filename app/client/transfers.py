"""Moving artifacts: adapter and export archives fetched and unpacked, exports waited for."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from app.client.archives import extract_tarball
from app.client.http import ClientError, LoraforgeClient
from app.client.output import all_pages, stderr

EXPORT_POLL_S = 1.0


def checkpoint_adapter_path(client: LoraforgeClient, job_id: str, step: int) -> str:
    """The API path of the adapter saved at `step`, or ClientError naming the steps there are."""
    found = all_pages(client, f"/fine_tuning/jobs/{job_id}/checkpoints", None)
    match = [c for c in found if c["step_number"] == step]
    if not match:
        steps = ", ".join(str(c["step_number"]) for c in found) or "none"
        raise ClientError(f"{job_id} has no checkpoint at step {step} (steps: {steps})")
    return f"/fine_tuning/jobs/{job_id}/checkpoints/{match[0]['id']}/adapter"


def fetch_and_extract(client: LoraforgeClient, path: str, out: Path) -> list[Path]:
    """Download a .tar.gz from the API into a temporary file, then extract it safely."""
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=out, prefix=".download-", suffix=".tar.gz") as archive:
        client.download(path, archive)
        archive.flush()
        return extract_tarball(Path(archive.name), out)


def wait_for_export(client: LoraforgeClient, path: str) -> dict[str, Any]:
    """Poll an export until it has succeeded or failed."""
    with stderr.status("building the merged model…"):
        while True:
            export: dict[str, Any] = client.get(path)
            if export["status"] in ("succeeded", "failed"):
                return export
            time.sleep(EXPORT_POLL_S)
