"""A job's workspace on both backends: checkpoints go to storage complete (marker last) and
come back on another machine, whose local disk starts empty."""

from __future__ import annotations

from pathlib import Path

from app.config import Settings
from app.storage import LocalStorage, Storage, build_storage
from tests.artifacts import write_files
from worker.workspace import JobWorkspace, newest_complete_step

CHECKPOINT = {
    "adapter/adapter_config.json": b'{"r": 8}',
    "adapter/adapter_model.safetensors": b"\x00" * 512,
    "optimizer.pt": b"optimizer state",
    "rng.pt": b"rng",
    "trainer_state.json": b'{"step": 0}',
}


def save_step(workspace: JobWorkspace, step: int) -> str:
    """What the engine and the runner do at a checkpoint: write it locally, then save it."""
    write_files(
        workspace.output_dir / "checkpoints" / f"step-{step}",
        {**CHECKPOINT, "COMPLETE": f"{step}\n".encode()},
    )
    rows = "".join(f"{s},{2.0 / s}\n" for s in range(1, step + 1))
    write_files(workspace.output_dir, {"results.csv": f"step,train_loss\n{rows}".encode()})
    return workspace.save_checkpoint(workspace.output_dir / "checkpoints" / f"step-{step}")


def local_tree(directory: Path) -> dict[str, bytes]:
    return {
        p.relative_to(directory).as_posix(): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def newest_local_checkpoint(output_dir: Path) -> str | None:
    """The engine's rule: the highest step-N directory with its COMPLETE marker."""
    complete = [
        (int(p.name.split("-")[1]), p.name)
        for p in (output_dir / "checkpoints").glob("step-*")
        if (p / "COMPLETE").is_file()
    ]
    return max(complete)[1] if complete else None


def another_machine(settings: Settings, tmp_path: Path) -> Storage:
    """The same storage seen from a machine with its own, empty local disk."""
    return build_storage(settings.model_copy(update={"cache_dir": tmp_path / "machine-b"}))


def test_a_saved_checkpoint_is_stored_complete_with_its_results(storage: Storage):
    workspace = JobWorkspace(storage, "ftjob-1")

    key = save_step(workspace, 10)

    assert key == "jobs/ftjob-1/checkpoints/step-10"
    stored = {item.key.removeprefix(f"{key}/") for item in storage.list_objects(key)}
    assert stored == {*CHECKPOINT, "COMPLETE"}
    assert newest_complete_step(storage, "jobs/ftjob-1") == 10
    with storage.open("jobs/ftjob-1/results.csv") as results:
        assert results.read().decode().count("\n") == 11


def test_another_machine_resumes_from_the_newest_complete_checkpoint(
    storage: Storage, settings: Settings, tmp_path: Path
):
    first = JobWorkspace(storage, "ftjob-2")
    save_step(first, 10)
    save_step(first, 20)
    # A crash while step 30 went up: its files are there, its marker is not.
    write_files(first.output_dir / "checkpoints" / "step-30", CHECKPOINT)
    storage.push(first.output_dir / "checkpoints" / "step-30", "jobs/ftjob-2/checkpoints/step-30")
    expected = local_tree(first.output_dir / "checkpoints" / "step-20")
    first.release()

    second = JobWorkspace(another_machine(settings, tmp_path), "ftjob-2")
    restored = second.restore()

    assert newest_local_checkpoint(second.output_dir) == "step-20"
    assert local_tree(second.output_dir / "checkpoints" / "step-20") == expected
    assert (second.output_dir / "results.csv").read_text().count("\n") == 21
    if isinstance(storage, LocalStorage):
        assert restored is None  # the data dir is the workspace: the engine finds step-20 there
    else:
        assert restored == "step-20"
        assert not (second.output_dir / "checkpoints" / "step-10").exists()
        assert not (second.output_dir / "checkpoints" / "step-30").exists()


def test_restore_with_nothing_stored_starts_from_scratch(storage: Storage):
    workspace = JobWorkspace(storage, "ftjob-3")
    assert workspace.restore() is None
    assert newest_local_checkpoint(workspace.output_dir) is None


def test_final_adapter_and_results_are_stored_and_the_copy_released(
    storage: Storage, settings: Settings
):
    workspace = JobWorkspace(storage, "ftjob-4")
    write_files(workspace.output_dir / "adapter", {"adapter_model.safetensors": b"w"})
    write_files(workspace.output_dir, {"results.csv": b"step,train_loss\n1,2.0\n"})

    workspace.save_final(workspace.output_dir / "adapter")
    workspace.release()

    assert storage.exists("jobs/ftjob-4/adapter/adapter_model.safetensors")
    assert storage.exists("jobs/ftjob-4/results.csv")
    assert workspace.output_dir.exists() == isinstance(storage, LocalStorage)


def test_datasets_are_read_from_a_local_copy(storage: Storage, tmp_path: Path):
    source = tmp_path / "train.jsonl"
    source.write_bytes(b'{"text": "hi"}\n')
    storage.put_file(source, "files/org-1/file-1")

    path = JobWorkspace(storage, "ftjob-5").dataset("files/org-1/file-1")

    assert path.read_bytes() == b'{"text": "hi"}\n'
