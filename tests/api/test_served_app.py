"""The app as `loraforge api` and `serve` build it: its startup heap is frozen for the GC."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PROBE = """
import gc
before = gc.get_freeze_count()
from app.main import create_served_app
app = create_served_app()
print(before, gc.get_freeze_count(), type(app).__name__)
"""


def test_served_app_freezes_what_startup_built(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "LORAFORGE_DATA_DIR": str(tmp_path / "data"),
        "LORAFORGE_DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite'}",
        "LORAFORGE_BROKER_URL": "memory://",
    }
    done = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    before, after, kind = done.stdout.split()
    assert (int(before), kind) == (0, "FastAPI")
    # Modules, routes and schemas: far more than a bare interpreter's objects.
    assert int(after) > 100_000
