"""`loraforge serve`: one command runs API and a supervised worker; a dead worker is replaced;
Ctrl-C stops everything; the first key is created only once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.e2e.stacks import FAST_RECOVERY, hello_dataset, upload
from tests.live import alive, free_port, serve_process, stop, wait_for, worker_children

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "term"])
def test_serve_replaces_a_dead_worker_and_stops_cleanly(tmp_path: Path, stop_signal: int):
    env = {
        **FAST_RECOVERY,
        "LORAFORGE_DATA_DIR": str(tmp_path / "data"),
        "LORAFORGE_DATABASE_URL": "",
        "LORAFORGE_BROKER_URL": "",
    }
    port = free_port()
    log = (tmp_path / "serve.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
        env={**os.environ, **env},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(lambda: _healthy(port), 60, "serve to answer /healthz")
        (first_worker,) = wait_for(lambda: worker_children(process.pid), 30, "the worker process")
        os.kill(first_worker, signal.SIGKILL)
        replaced = wait_for(
            lambda: [p for p in worker_children(process.pid) if p != first_worker and alive(p)],
            30,
            "a replacement worker",
        )
        process.send_signal(stop_signal)
        assert process.wait(40) == 0
        assert not any(alive(pid) for pid in replaced)
    finally:
        stop(process)
        log.close()
    text = (tmp_path / "serve.log").read_text(errors="replace")
    assert "restarting" in text


def test_first_key_is_created_once(tmp_path: Path):
    env = {
        **FAST_RECOVERY,
        "LORAFORGE_DATA_DIR": str(tmp_path / "data"),
        "LORAFORGE_DATABASE_URL": "",
        "LORAFORGE_BROKER_URL": "",
    }
    with serve_process(env, tmp_path / "first.log") as (base_url, key, _pid):
        assert (
            httpx.get(
                f"{base_url}/v1/models", headers={"Authorization": f"Bearer {key}"}
            ).status_code
            == 200
        )
    with pytest.raises(RuntimeError), serve_process(env, tmp_path / "second.log", 15):
        pass  # no key is printed on the second start, so serve_process never sees one
    assert "LORAFORGE_API_KEY=" not in (tmp_path / "second.log").read_text(errors="replace")


def test_serve_refuses_a_job_larger_than_its_machine_can_hold(tmp_path: Path):
    env = {
        **FAST_RECOVERY,
        "LORAFORGE_DATA_DIR": str(tmp_path / "data"),
        "LORAFORGE_DATABASE_URL": "",
        "LORAFORGE_BROKER_URL": "",
    }
    assert "LORAFORGE_WORKER_MEMORY_BYTES" not in os.environ  # serve measures it
    with serve_process(env, tmp_path / "serve.log") as (base_url, key, _pid):
        client = httpx.Client(
            base_url=f"{base_url}/v1", headers={"Authorization": f"Bearer {key}"}, timeout=30
        )
        training_file = upload(client, hello_dataset())
        body = {
            "model": "loraforge/tiny-random-llama",
            "training_file": training_file,
            # About 770 GiB of activations and logits for the tiny model.
            "method": {
                "type": "supervised",
                "supervised": {"hyperparameters": {"batch_size": 256}},
            },
            "training": {"max_seq_length": 131_072, "gradient_checkpointing": False},
        }
        refused = client.post("/fine_tuning/jobs", json=body)
        accepted = client.post("/fine_tuning/jobs", json={**body, "method": None, "training": {}})
        if accepted.is_success:  # the point is made; no need to train it
            client.post(f"/fine_tuning/jobs/{accepted.json()['id']}/cancel")
    assert refused.status_code == 400, refused.text
    error = refused.json()["error"]
    assert error["code"] == "insufficient_memory"
    assert "the workers have" in error["message"]
    assert accepted.status_code == 200, accepted.text


def _healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
    except httpx.TransportError:
        return False
