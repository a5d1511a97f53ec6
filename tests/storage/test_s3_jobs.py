"""Scale-out with a bucket, with real processes: `loraforge api` and `loraforge worker`s that
share only the database, the broker and an S3-compatible bucket (moto's server), each with a
data dir of its own. Artifacts land in the bucket, download through the API, and a job whose
worker is killed resumes on another worker whose disk starts empty."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import tarfile
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.e2e.stacks import (
    FAST_RECOVERY,
    checkpoint_steps,
    create_job,
    events,
    hello_dataset,
    metric_steps,
    upload,
    wait_status,
)
from tests.live import api_server, loraforge, start_worker, stop, wait_for
from tests.storage.s3server import bucket_keys, create_bucket, s3_environment

pytestmark = pytest.mark.slow


@dataclass
class BucketStack:
    """An API and workers on one shared SQLite database and broker, and one bucket."""

    root: Path
    env: dict[str, str]
    endpoint: str
    bucket: str
    base_url: str = ""
    key: str = ""
    workers: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=f"{self.base_url}/v1",
            timeout=30,
            headers={"Authorization": f"Bearer {self.key}"},
        )

    def data_dir(self, machine: str) -> Path:
        return self.root / machine

    def start_worker(self, machine: str) -> None:
        """A worker on `machine`: its own LORAFORGE_DATA_DIR, nothing else of its own."""
        env = {**self.env, "LORAFORGE_DATA_DIR": str(self.data_dir(machine))}
        self.workers[machine] = start_worker(env, self.root / f"{machine}.log")

    def kill_worker(self, machine: str) -> None:
        process = self.workers.pop(machine)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(10)

    def bucket_keys(self) -> set[str]:
        return bucket_keys(self.endpoint, self.bucket)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, s3_endpoint: str) -> Iterator[BucketStack]:
    root = tmp_path_factory.mktemp("bucket-stack")
    shared = root / "shared"  # stands for Postgres and Redis on their own hosts
    shared.mkdir()
    bucket = create_bucket(s3_endpoint)
    env = {
        **FAST_RECOVERY,
        **s3_environment(s3_endpoint, bucket, prefix="loraforge"),
        "LORAFORGE_DATABASE_URL": f"sqlite:///{shared / 'loraforge.db'}",
        "LORAFORGE_BROKER_URL": f"sqla+sqlite:///{shared / 'broker.db'}",
    }
    stack = BucketStack(root, env, s3_endpoint, bucket)
    with ExitStack() as cleanup:
        api_env = {**env, "LORAFORGE_DATA_DIR": str(stack.data_dir("api"))}
        stack.base_url = cleanup.enter_context(api_server(api_env, root / "api.log"))
        created = loraforge(api_env, "keys", "create", "--org", "bucket")
        assert created.returncode == 0, created.stderr
        stack.key = created.stdout.strip()
        cleanup.callback(lambda: [stop(w, grace_s=5) for w in stack.workers.values()])
        stack.start_worker("machine-1")
        yield stack


def extract(content: bytes, into: Path) -> Path:
    with tarfile.open(fileobj=io.BytesIO(content), mode="r:gz") as archive:
        archive.extractall(into, filter="data")
    (top,) = [p for p in into.iterdir() if p.is_dir()]
    return top


def wait_export(client: httpx.Client, job_id: str, export_id: str) -> dict[str, object]:
    def done() -> dict[str, object] | None:
        export: dict[str, object] = client.get(
            f"/fine_tuning/jobs/{job_id}/exports/{export_id}"
        ).json()
        return export if export["status"] in ("succeeded", "failed") else None

    return wait_for(done, 180, "the export")


def test_artifacts_land_in_the_bucket_and_download_through_the_api(
    stack: BucketStack, tmp_path: Path
):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from app.catalog import BUILTIN_MODELS
    from worker.training.models import resolve_model_dir

    client = stack.client()
    train = upload(client, hello_dataset(40))
    created = create_job(client, train, max_steps=20, checkpoint_every_steps=10)
    job_id = created["id"]
    finished = wait_status(client, job_id, "succeeded", "failed")
    assert finished["status"] == "succeeded", finished["error"]
    (results_file,) = finished["result_files"]

    keys = stack.bucket_keys()
    org = next(k.split("/")[2] for k in keys if k.endswith(f"/{train}"))
    job = f"loraforge/jobs/{job_id}"
    assert {
        f"loraforge/files/{org}/{train}",
        f"loraforge/files/{org}/{results_file}",
        f"{job}/results.csv",
        f"{job}/adapter/adapter_model.safetensors",
        f"{job}/adapter/adapter_config.json",
        f"{job}/checkpoints/step-10/COMPLETE",
        f"{job}/checkpoints/step-10/adapter/adapter_model.safetensors",
        f"{job}/checkpoints/step-20/COMPLETE",
    } <= keys
    # The bucket holds the artifacts; the machines kept no copy of them.
    for machine in ("api", "machine-1"):
        assert not (stack.data_dir(machine) / "jobs").exists()
        assert not (stack.data_dir(machine) / "cache" / "jobs" / job_id).exists()

    csv = client.get(f"/files/{results_file}/content").text
    assert len(csv.splitlines()) == 21

    adapter = client.get(f"/fine_tuning/jobs/{job_id}/adapter")
    assert adapter.status_code == 200, adapter.text
    assert f"{job}/adapter.tar.gz" in stack.bucket_keys()
    head = client.get(f"/fine_tuning/jobs/{job_id}/adapter", headers={"Range": "bytes=0-99"})
    assert head.status_code == 206 and head.content == adapter.content[:100]
    adapter_dir = extract(adapter.content, tmp_path / "adapter")
    assert (adapter_dir / "adapter_model.safetensors").is_file()
    base_dir = resolve_model_dir(BUILTIN_MODELS[0], stack.data_dir("machine-1") / "models")
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), adapter_dir)
    assert any("lora_A" in name for name, _ in model.named_parameters())

    export = client.post(
        f"/fine_tuning/jobs/{job_id}/exports", json={"type": "merged", "dtype": "float32"}
    ).json()
    done = wait_export(client, job_id, export["id"])
    assert done["status"] == "succeeded", done
    assert f"loraforge/exports/{export['id']}/config.json" in stack.bucket_keys()
    merged = client.get(f"/fine_tuning/jobs/{job_id}/exports/{export['id']}/content")
    loaded = AutoModelForCausalLM.from_pretrained(extract(merged.content, tmp_path / "merged"))
    assert not any("lora" in name for name, _ in loaded.named_parameters())


def test_a_killed_job_resumes_on_a_worker_with_an_empty_disk(stack: BucketStack):
    client = stack.client()
    created = create_job(
        client, upload(client, hello_dataset(40)), max_steps=200, checkpoint_every_steps=10
    )
    job_id = created["id"]
    wait_for(lambda: max(checkpoint_steps(client, job_id), default=0) >= 20, 180, "checkpoints")

    stack.kill_worker("machine-1")
    assert not stack.data_dir("machine-2").exists()
    stack.start_worker("machine-2")
    finished = wait_status(client, job_id, "succeeded", "failed")

    assert finished["status"] == "succeeded", finished["error"]
    assert finished["attempt"] == 2
    messages = [e["message"] for e in events(client, job_id)]
    resumed = [m for m in messages if m.startswith("Attempt 2 resuming from checkpoint step-")]
    assert resumed, messages
    resumed_step = int(resumed[0].rsplit("step-", 1)[1])
    assert resumed_step >= 20
    steps = [s for s, _ in metric_steps(client, job_id)]
    assert set(steps) == set(range(1, 201))
    assert all(resumed_step < s <= resumed_step + 10 for s in steps if steps.count(s) > 1)
    # results.csv came back from the bucket too: one row per step, in order, none lost.
    (results_file,) = finished["result_files"]
    rows = client.get(f"/files/{results_file}/content").text.splitlines()[1:]
    assert [int(row.split(",")[0]) for row in rows] == list(range(1, 201))
    assert f"loraforge/jobs/{job_id}/checkpoints/step-200/COMPLETE" in stack.bucket_keys()
