"""Adapter downloads: a job's final adapter or one checkpoint's, as a cached .tar.gz."""

from __future__ import annotations

from dataclasses import dataclass

from app.db.models import Checkpoint, Job
from app.errors import ArtifactNotFound, InvalidJobState
from app.services.archives import SourceMissing, cached_tar_gz
from app.storage import Storage

COMPLETE_MARKER = "COMPLETE"
# Newer checkpoints keep the PEFT adapter in this subfolder, beside the training state.
CHECKPOINT_ADAPTER_DIR = "adapter"
# Resume state, not adapter: optimizer.pt, scheduler.pt, scaler.pt, rng.pt, rng_state.pth...
TRAINING_STATE_FILES = frozenset({COMPLETE_MARKER, "trainer_state.json", "training_args.bin"})
TRAINING_STATE_SUFFIXES = (".pt", ".pth")


@dataclass(frozen=True)
class Download:
    """An archive in storage and the filename a client should save it as."""

    key: str
    filename: str


def adapter_key(job_id: str) -> str:
    return f"jobs/{job_id}/adapter"


def is_training_state(relative: str) -> bool:
    """True for a checkpoint's optimizer/scheduler/RNG/trainer state files."""
    name = relative.rsplit("/", 1)[-1]
    return name in TRAINING_STATE_FILES or name.endswith(TRAINING_STATE_SUFFIXES)


def job_adapter(storage: Storage, job: Job) -> Download:
    """The final adapter of a succeeded job."""
    if job.status != "succeeded":
        raise InvalidJobState(
            f"the adapter can be downloaded once the job has succeeded; this job is {job.status}",
            param="fine_tuning_job_id",
        )
    source = adapter_key(job.id)
    name = f"{job.id}-adapter"
    try:
        key = cached_tar_gz(storage, source, f"{source}.tar.gz", top=name)
    except SourceMissing as exc:
        raise ArtifactNotFound(
            f"job {job.id!r} has no adapter files", param="fine_tuning_job_id"
        ) from exc
    return Download(key, f"{name}.tar.gz")


def checkpoint_adapter_prefix(storage: Storage, root: str) -> str:
    """Where a checkpoint's adapter files are: its adapter/ subfolder, or (older layouts)
    the checkpoint directory itself."""
    subfolder = f"{root}/{CHECKPOINT_ADAPTER_DIR}"
    return subfolder if storage.has_prefix(subfolder) else root


def checkpoint_adapter(storage: Storage, checkpoint: Checkpoint) -> Download:
    """A complete checkpoint's adapter: its adapter/ subfolder if it has one, otherwise the
    checkpoint directory without the training state."""
    root = checkpoint.storage_key
    if not storage.exists(f"{root}/{COMPLETE_MARKER}"):
        raise ArtifactNotFound(
            f"checkpoint {checkpoint.id!r} has no complete files", param="checkpoint_id"
        )
    source = checkpoint_adapter_prefix(storage, root)
    skip = None if source != root else is_training_state
    name = f"{checkpoint.job_id}-step-{checkpoint.step_number}-adapter"
    try:
        # The archive sits beside the step-{N} directory, where the engine's resume scan
        # (which matches only `step-{N}` names) ignores it.
        key = cached_tar_gz(storage, source, f"{root}.tar.gz", top=name, skip=skip)
    except SourceMissing as exc:
        raise ArtifactNotFound(
            f"checkpoint {checkpoint.id!r} has no adapter files", param="checkpoint_id"
        ) from exc
    return Download(key, f"{name}.tar.gz")
