"""A job's local working directory and its place in storage (DESIGN §3: jobs/{job_id}/...).

The engine reads and writes local directories. On the data dir the workspace is the storage
itself, so every copy below is a no-op. With a bucket the workspace is a local cache, and the
bucket is the truth: before training the workspace receives the bucket's newest complete
checkpoint (so an attempt resumes on any machine), each checkpoint goes up as soon as it is
saved (results.csv first, the COMPLETE marker last), and the adapter and results.csv go up
before the job is marked succeeded.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from app.storage import Storage

COMPLETE_MARKER = "COMPLETE"
RESULTS_CSV = "results.csv"
COMPLETE_CHECKPOINT = re.compile(r"^checkpoints/step-(\d+)/" + COMPLETE_MARKER + "$")


class JobWorkspace:
    """Where the engine works on one job, and how its artifacts reach storage."""

    def __init__(self, storage: Storage, job_id: str) -> None:
        self.storage = storage
        self.prefix = f"jobs/{job_id}"
        self.output_dir = storage.workspace(self.prefix)
        # True when storage lies elsewhere (a bucket) and this directory is only a copy.
        self.remote = storage.local_path(self.prefix) is None

    @property
    def results_key(self) -> str:
        return f"{self.prefix}/{RESULTS_CSV}"

    @property
    def results_csv(self) -> Path:
        """Where the engine writes step metrics (TrainingPaths.results_csv)."""
        return self.output_dir / RESULTS_CSV

    def checkpoint_key(self, checkpoint_dir: Path) -> str:
        return f"{self.prefix}/checkpoints/{checkpoint_dir.name}"

    def dataset(self, key: str) -> Path:
        """A local copy of an uploaded file (immutable, so a cached copy stays valid)."""
        return self.storage.fetch(key)

    def restore(self) -> str | None:
        """Replace the local copy with the stored newest complete checkpoint and results.csv;
        the checkpoint's name, or None when storage has none (or is this directory)."""
        if not self.remote:
            return None
        shutil.rmtree(self.output_dir, ignore_errors=True)
        step = newest_complete_step(self.storage, self.prefix)
        if step is None:
            return None
        name = f"step-{step}"
        if self.storage.exists(self.results_key):
            fetched = self.storage.fetch(self.results_key)
            if fetched != self.results_csv:
                self.results_csv.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(fetched, self.results_csv)
        self.storage.pull(
            f"{self.prefix}/checkpoints/{name}",
            self.output_dir / "checkpoints" / name,
            last=COMPLETE_MARKER,
        )
        return name

    def save_checkpoint(self, checkpoint_dir: Path) -> str:
        """Store a complete checkpoint; its key. results.csv goes first, so a stored
        checkpoint always has the metrics of every step before it."""
        if self.remote and self.results_csv.exists():
            self.storage.put_file(self.results_csv, self.results_key)
        key = self.checkpoint_key(checkpoint_dir)
        self.storage.push(checkpoint_dir, key, last=COMPLETE_MARKER)
        return key

    def save_final(self, adapter_dir: Path) -> None:
        """Store the final adapter directory and results.csv."""
        self.storage.push(adapter_dir, f"{self.prefix}/adapter")
        if self.remote:
            self.storage.put_file(self.results_csv, self.results_key)

    def release(self) -> None:
        """Drop the local copy (only where storage keeps the original elsewhere)."""
        self.storage.release(self.prefix)


def newest_complete_step(storage: Storage, job_prefix: str) -> int | None:
    """The highest step whose checkpoint has its COMPLETE marker in storage."""
    steps = [
        int(match.group(1))
        for item in storage.list_objects(f"{job_prefix}/checkpoints")
        if (match := COMPLETE_CHECKPOINT.match(item.key.removeprefix(f"{job_prefix}/")))
    ]
    return max(steps, default=None)
