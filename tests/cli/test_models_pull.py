"""`loraforge models pull NAME --out DIR`: a catalog base on this machine, with no server and
no API key: the built-in model byte for byte as a worker generates it, a hub model at its
pinned revision from the Hugging Face cache, a path model copied from its directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.live import loraforge_in
from tests.worker.factories import hub_cache
from worker.training.tiny import ensure_tiny_model

pytestmark = pytest.mark.slow

REVISION = "fedcba9876543210fedcba9876543210fedcba98"


def tree(directory: Path) -> dict[str, bytes]:
    return {
        path.relative_to(directory).as_posix(): path.read_bytes()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def workers_tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model as a worker generates it into its data dir (in this process)."""
    return ensure_tiny_model(tmp_path_factory.mktemp("worker-data") / "models")


def test_the_built_in_model_is_pulled_byte_for_byte_without_server_or_key(
    tmp_path: Path, workers_tiny: Path
):
    pulled = loraforge_in(
        tmp_path, "models", "pull", "loraforge/tiny-random-llama", "--out", "base"
    )
    assert pulled.returncode == 0, pulled.stderr
    assert pulled.stdout.strip() == "base"
    assert tree(tmp_path / "base") == tree(workers_tiny)
    assert {"model.safetensors", "tokenizer.json", "chat_template.jinja"} <= set(tree(workers_tiny))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base"]  # no data/ made here

    again = loraforge_in(tmp_path, "models", "pull", "loraforge/tiny-random-llama", "-o", "base")
    assert again.returncode == 1
    assert "base exists and is not an empty directory" in again.stderr


def test_a_hub_model_is_pulled_at_its_pinned_revision_from_the_cache(
    tmp_path: Path, workers_tiny: Path
):
    cache = hub_cache(tmp_path / "hf-cache", "acme-research/tiny-llama", REVISION, workers_tiny)
    (cache / "models--acme-research--tiny-llama" / "snapshots" / REVISION / "old.bin").write_bytes(
        b"pickle weights are never copied"
    )
    catalog = {"acme/tiny": {"hub_id": "acme-research/tiny-llama", "revision": REVISION}}
    pulled = loraforge_in(
        tmp_path,
        "models", "pull", "acme/tiny", "--out", str(tmp_path / "base"),
        LORAFORGE_MODELS=json.dumps(catalog), HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1",
    )  # fmt: skip
    assert pulled.returncode == 0, pulled.stderr
    assert tree(tmp_path / "base") == tree(workers_tiny)

    catalog["acme/tiny"]["revision"] = "0" * 40  # a revision the cache does not have
    missing = loraforge_in(
        tmp_path,
        "models", "pull", "acme/tiny", "--out", str(tmp_path / "other"),
        LORAFORGE_MODELS=json.dumps(catalog), HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1",
    )  # fmt: skip
    assert missing.returncode == 1
    assert f"cannot get acme/tiny (acme-research/tiny-llama@{'0' * 40})" in missing.stderr
    assert not (tmp_path / "other").exists()


def test_a_path_model_is_copied_where_its_directory_exists(tmp_path: Path, workers_tiny: Path):
    catalog = {"ops/tiny": {"path": str(workers_tiny)}, "ops/gone": {"path": "/nowhere/tiny"}}
    settings = {"LORAFORGE_MODELS": json.dumps(catalog)}
    pulled = loraforge_in(tmp_path, "models", "pull", "ops/tiny", "-o", "base", **settings)
    assert pulled.returncode == 0, pulled.stderr
    assert tree(tmp_path / "base") == tree(workers_tiny)

    gone = loraforge_in(tmp_path, "models", "pull", "ops/gone", "-o", "gone", **settings)
    assert gone.returncode == 1
    assert "ops/gone is served from /nowhere/tiny on the operator's machines" in gone.stderr
    unknown = loraforge_in(tmp_path, "models", "pull", "acme/llama", "-o", "x", **settings)
    assert unknown.returncode == 1
    assert "'acme/llama' is not in this machine's catalog" in unknown.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base"]
