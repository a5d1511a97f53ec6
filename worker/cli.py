"""`loraforge train SPEC.json --output DIR`: the engine on this machine, from a job body.

SPEC.json is the body of POST /v1/fine_tuning/jobs, except that training_file and
validation_file are local paths (relative ones are resolved against the spec file's
directory) and model may be a catalog id or a local model directory. DIR receives adapter/,
results.csv and checkpoints/; running the same command again resumes from the newest
checkpoint. Ctrl-C pauses at the next step boundary with a checkpoint.
"""

from __future__ import annotations

import json
import secrets
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from app.catalog import CatalogEntry
from app.config import get_settings
from app.datasets import DatasetError, read_examples
from app.schemas.jobs import JobCreate
from app.schemas.spec import ResolvedSpec, resolve_spec
from worker.training.errors import TrainingInputError

# JobCreate validates file ids; local paths are taken out and checked here instead.
LOCAL_FILE_PLACEHOLDER = "file-local"
SUMMARY_FIELDS = ("trained_tokens", "train_runtime", "tokens_per_second", "final_loss")


def read_job_body(spec_path: Path) -> tuple[JobCreate, Path, Path | None]:
    """Validate SPEC.json as a job body; return it with the local training/validation paths."""
    try:
        body = json.loads(spec_path.read_text())
    except (OSError, ValueError) as exc:
        raise TrainingInputError("invalid_spec", f"cannot read {spec_path}: {exc}") from exc
    if not isinstance(body, dict) or not isinstance(body.get("training_file"), str):
        raise TrainingInputError(
            "invalid_spec", "the spec needs a training_file path", "training_file"
        )
    base = spec_path.parent
    train_file = base / body["training_file"]
    validation = body.get("validation_file")
    validation_file = base / validation if isinstance(validation, str) else None
    body["training_file"] = LOCAL_FILE_PLACEHOLDER
    if validation_file is not None:
        body["validation_file"] = LOCAL_FILE_PLACEHOLDER
    try:
        job = JobCreate.model_validate(body)
        job.requested_hyperparameters()
    except (ValidationError, ValueError) as exc:
        raise TrainingInputError("invalid_spec", f"{spec_path}: {exc}") from exc
    return job, train_file, validation_file


def resolve_model(model: str, base: Path) -> CatalogEntry:
    """A catalog id, or a local directory holding a Hugging Face model."""
    catalog = get_settings().catalog()
    if model in catalog:
        return catalog[model]
    directory = (base / model).expanduser()
    if directory.is_dir():
        return CatalogEntry(id=model, path=str(directory.resolve()))
    raise TrainingInputError(
        "model_not_found",
        f"{model!r} is neither a catalog model ({', '.join(sorted(catalog))}) nor a directory",
        "model",
    )


def resolve_job_spec(job: JobCreate, train_file: Path) -> ResolvedSpec:
    """Fill every "auto" from the training file's size, as the API does at job creation."""
    try:
        n_examples = len(read_examples(train_file))
    except (OSError, DatasetError) as exc:
        raise TrainingInputError("invalid_file", f"{train_file}: {exc}", "training_file") from exc
    return resolve_spec(
        model=job.model,
        # Like the API: a random seed when none is given; provenance.json records it.
        seed=job.seed if job.seed is not None else secrets.randbelow(2**31),
        n_train_examples=n_examples,
        hyperparameters=job.requested_hyperparameters(),
        lora=job.lora,
        quantization=job.quantization,
        training=job.training,
    )


def run_train(spec_path: Path, output_dir: Path, data_dir: Path | None = None) -> dict[str, Any]:
    """Train from SPEC.json into output_dir; print and return the one-line JSON summary."""
    try:
        summary = train_from_spec(spec_path, output_dir, data_dir)
    except TrainingInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        print(json.dumps({"error": exc.as_dict()}), flush=True)
        raise SystemExit(2) from exc
    print(json.dumps(summary), flush=True)
    return summary


def train_from_spec(spec_path: Path, output_dir: Path, data_dir: Path | None) -> dict[str, Any]:
    """Resolve the spec, run the engine with a progress bar, summarise the result."""
    from worker.progress import ProgressHooks, pause_on_interrupt
    from worker.training.config import TrainingConfig, TrainingPaths
    from worker.training.engine import run_training

    job, train_file, validation_file = read_job_body(spec_path)
    entry = resolve_model(job.model, spec_path.parent)
    config = TrainingConfig.from_spec(resolve_job_spec(job, train_file), entry)
    paths = TrainingPaths(
        train_file=train_file,
        validation_file=validation_file,
        output_dir=output_dir,
        models_dir=(data_dir or get_settings().data_dir) / "models",
    )
    with ProgressHooks() as progress, pause_on_interrupt(progress):
        result = run_training(config, paths, progress.hooks())
    summary = {name: getattr(result, name) for name in SUMMARY_FIELDS}
    summary.update(
        peak_memory_bytes=result.peak_memory_bytes,
        status=result.status,
        global_step=result.global_step,
        seed=config.seed,
        adapter_dir=str(result.adapter_dir) if result.adapter_dir else None,
        results_csv=str(result.results_csv),
    )
    return summary
