"""The memory a worker has for jobs, as a worker measures it and as `loraforge serve` asks
one to measure it for its API."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from app.config import Settings
from app.supervisor import embedded_worker_memory
from worker.device_memory import available_ram_bytes

INSTALLED = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
GiB = 1 << 30


def settings(**fields: object) -> Settings:
    return Settings(broker_url="memory://", _env_file=None, **fields)  # type: ignore[arg-type]


def test_available_ram_is_some_of_the_installed_ram():
    found = available_ram_bytes()
    assert found is not None and 0 < found <= INSTALLED


def test_the_probe_prints_the_setting_when_there_is_one():
    env = {**os.environ, "LORAFORGE_WORKER_MEMORY_BYTES": str(3 * GiB)}
    ran = subprocess.run(
        [sys.executable, "-m", "worker.device_memory"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert ran.stdout.strip() == str(3 * GiB)


def test_serve_keeps_an_operators_setting():
    assert embedded_worker_memory(settings(worker_memory_bytes=5 * GiB)) == 5 * GiB


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU machine reports its GPU")
def test_serve_measures_the_ram_its_cpu_workers_will_have(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("LORAFORGE_WORKER_MEMORY_BYTES", raising=False)
    measured = embedded_worker_memory(settings())
    assert measured is not None and 0 < measured <= INSTALLED
