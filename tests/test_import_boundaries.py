"""The dependency rule (DESIGN §2): the API process never imports torch, the ML stack or
worker/, even after serving requests on every router."""

from __future__ import annotations

import subprocess
import sys
import textwrap

PROBE = textwrap.dedent(
    """
    import sys, tempfile
    from pathlib import Path
    from fastapi.testclient import TestClient
    from app.config import Settings
    from app.main import create_app

    root = Path(tempfile.mkdtemp())
    settings = Settings(data_dir=root, broker_url="memory://", _env_file=None)
    with TestClient(create_app(settings)) as client:
        for path in ("/healthz", "/readyz", "/v1/models", "/v1/files", "/v1/fine_tuning/jobs",
                     "/openapi.json"):
            client.get(path)
    heavy = ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "datasets")
    loaded = sorted(
        name for name in sys.modules
        if name.split(".")[0] in heavy or name == "worker" or name.startswith("worker.")
    )
    print("LOADED", loaded)
    """
)


def test_api_process_imports_no_torch_and_nothing_from_worker():
    ran = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr
    assert "LOADED []" in ran.stdout, ran.stdout
