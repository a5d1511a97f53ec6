"""`loraforge models pull NAME --out DIR`: a catalog base model as a local directory, the base
to load a downloaded adapter on (`PeftModel.from_pretrained(base, adapter_dir)`).

- Built-in models are generated here, byte for byte what a worker trains on: no server, no
  API key, no network.
- Hub models are read from the Hugging Face cache at the catalog's pinned revision (the
  revision adapter_config.json records), downloaded into the cache first unless
  HF_HUB_OFFLINE is set.
- Path models are copied from their directory, which exists only where the operator put it.

The directory is written beside `out` and renamed into place, so an interrupted pull leaves
nothing that looks like a model. Pickle weights are never copied (the worker never loads
them either).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from app.catalog import CatalogEntry

NOT_COPIED = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl", "*.h5", "*.msgpack", ".cache")


class PullError(Exception):
    """The model cannot be written here; the message says why and what to do."""


def pull_model(entry: CatalogEntry, out: Path) -> Path:
    """Write `entry`'s weights, config and tokenizer into `out` (new or empty); returns it."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise PullError(f"{out} exists and is not an empty directory")
    if entry.builtin:
        # torch and transformers are needed only here, to generate the model.
        from worker.training.tiny import write_tiny_model

        write_tiny_model(out)
        return out
    copy_model_dir(_source_dir(entry), out)
    return out


def _source_dir(entry: CatalogEntry) -> Path:
    if entry.path:
        directory = Path(entry.path).expanduser()
        if not (directory / "config.json").is_file():
            raise PullError(
                f"{entry.id} is served from {directory} on the operator's machines, and there "
                "is no model there on this one: copy that directory from a worker instead"
            )
        return directory
    from huggingface_hub import snapshot_download

    try:
        snapshot = snapshot_download(
            entry.hub_id or "", revision=entry.revision, ignore_patterns=list(NOT_COPIED)
        )
        return Path(snapshot)
    except Exception as exc:  # huggingface_hub raises several types for a miss or no network
        where = f"{entry.hub_id}@{entry.revision or 'main'}"
        message = f"cannot get {entry.id} ({where}) from the Hugging Face Hub: {exc}"
        raise PullError(message) from exc


def copy_model_dir(source: Path, out: Path) -> None:
    """Copy a model directory (following the cache's symlinks) into `out`, atomically."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        shutil.copytree(
            source, staging, ignore=shutil.ignore_patterns(*NOT_COPIED), dirs_exist_ok=True
        )
        os.rename(staging, out)  # replaces `out` only if it is an empty directory
    finally:
        shutil.rmtree(staging, ignore_errors=True)
