"""What the `api` image does, outside Docker: install the project without extras into a fresh
virtualenv with pip's real dependency resolution, and serve the API there without torch."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# What the Dockerfile's `source` stage copies.
SOURCES = ("pyproject.toml", "README.md", "app", "worker", "migrations")
WORKER_ONLY = {"torch", "transformers", "peft", "bitsandbytes", "accelerate", "datasets"}

SMOKE = """
import sys
from fastapi.testclient import TestClient
from app.config import Settings
from app.main import create_app

data = sys.argv[1]
settings = Settings(
    data_dir=data, database_url=f"sqlite:///{data}/db.sqlite", broker_url="memory://",
    _env_file=None,
)
with TestClient(create_app(settings)) as client:
    assert client.get("/healthz").status_code == 200
    assert client.get("/v1/models").status_code == 401
heavy = sorted({"torch", "transformers", "peft", "bitsandbytes", "boto3"} & set(sys.modules))
assert not heavy, heavy
print("served without torch")
"""


@pytest.mark.slow
def test_the_api_installs_and_serves_without_torch(tmp_path: Path):
    source = tmp_path / "src"
    source.mkdir()
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, source / name)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")

    installed = subprocess.run(
        [python, "-m", "pip", "install", "--disable-pip-version-check", "-q", str(source)],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert installed.returncode == 0, installed.stdout[-3000:] + installed.stderr[-3000:]

    listed = subprocess.run(
        [python, "-m", "pip", "list", "--format=json"], capture_output=True, text=True, timeout=120
    )
    names = {package["name"].lower() for package in json.loads(listed.stdout)}
    assert {"fastapi", "sqlalchemy", "celery", "loraforge"} <= names
    assert not names & WORKER_ONLY, names & WORKER_ONLY
    assert "boto3" not in names  # the s3 extra, which the api image adds

    (tmp_path / "data").mkdir()
    served = subprocess.run(
        [python, "-c", SMOKE, str(tmp_path / "data")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,  # not the repository: the installed package, not the checkout
    )
    assert served.returncode == 0, served.stdout + served.stderr
    assert "served without torch" in served.stdout
    help_text = subprocess.run(
        [str(venv / "bin" / "loraforge"), "--help"], capture_output=True, text=True, timeout=120
    )
    assert help_text.returncode == 0 and "worker" in help_text.stdout
