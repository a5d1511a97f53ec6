"""What a tenant downloads names the catalog's model and never a directory of the server: the
final adapter, a checkpoint's adapter (with the tokenizer, like the final one) and a merged
export, for a model served from a directory and one from the Hugging Face cache."""

from __future__ import annotations

import json
import shutil
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import huggingface_hub
import pytest
from transformers import AutoTokenizer

from app.catalog import CatalogEntry
from tests.worker.factories import build_config, chat_rows, hub_cache, write_jsonl
from worker.training.config import TrainingConfig, TrainingPaths
from worker.training.engine import run_training
from worker.training.export import export_merged
from worker.training.tiny import ensure_tiny_model

pytestmark = pytest.mark.slow

REVISION = "0123456789abcdef0123456789abcdef01234567"
# Directory names only the server has: none of them may reach a download.
SERVER_MARKERS = ("operator-models", "hf-cache", "snapshots/", "loraforge--tiny-random-llama")


@dataclass
class Trained:
    entry: CatalogEntry
    adapter: Path
    checkpoint_adapter: Path
    export: Path
    server_dirs: list[str]

    def downloads(self) -> list[Path]:
        """Every file of the three directories the API archives for a tenant."""
        return [
            path
            for directory in (self.adapter, self.checkpoint_adapter, self.export)
            for path in sorted(directory.rglob("*"))
            if path.is_file()
        ]


def served_entry(kind: str, root: Path, tiny: Path, patch: pytest.MonkeyPatch) -> CatalogEntry:
    """A catalog entry for a copy of the tiny model, from a directory or from the hub cache."""
    if kind == "path":
        directory = root / "operator-models" / "tiny"
        shutil.copytree(tiny, directory)
        return CatalogEntry(id="acme/tiny", path=str(directory))
    cache = hub_cache(root / "hf-cache", "acme-research/tiny-llama", REVISION, tiny)
    patch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return CatalogEntry(id="acme/tiny", hub_id="acme-research/tiny-llama", revision=REVISION)


@pytest.fixture(scope="module", params=["path", "hub"])
def trained(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, models_dir: Path
) -> Iterator[Trained]:
    root = tmp_path_factory.mktemp(request.param)
    with pytest.MonkeyPatch.context() as patch:
        entry = served_entry(request.param, root, ensure_tiny_model(models_dir), patch)
        spec = build_config(max_steps=2, checkpoint_every_steps=1).spec
        paths = TrainingPaths(
            train_file=write_jsonl(root / "train.jsonl", chat_rows(repeat=4)),
            output_dir=root / "job",
            models_dir=models_dir,
        )
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = run_training(TrainingConfig.from_spec(spec, entry, device="cpu"), paths)
        assert result.adapter_dir is not None
        # peft looks the base's name up on the Hub unless told what to save (offline here,
        # the lookup fails with this warning; online, it would be a request per save).
        assert not [w for w in caught if "Could not find a config file" in str(w.message)]
        export = root / "export"
        export_merged(entry, result.adapter_dir, export, models_dir, dtype="float32")
        yield Trained(
            entry,
            result.adapter_dir,
            paths.checkpoints_dir / "step-1" / "adapter",
            export,
            [str(root), str(models_dir.parent)],
        )


def test_adapter_configs_name_the_catalog_model_and_its_revision(trained: Trained) -> None:
    name = trained.entry.hub_id or trained.entry.id
    for adapter in (trained.adapter, trained.checkpoint_adapter):
        config = json.loads((adapter / "adapter_config.json").read_text())
        assert config["base_model_name_or_path"] == name
        assert config["revision"] == trained.entry.revision
        assert f"base_model: {name}\n" in (adapter / "README.md").read_text()


def test_provenance_and_export_json_name_the_model_without_a_path(trained: Trained) -> None:
    entry = trained.entry
    provenance = json.loads((trained.adapter / "provenance.json").read_text())
    assert provenance["base_model"] == {
        "id": "acme/tiny",
        "source": entry.source,
        "hub_id": entry.hub_id,
        "revision": entry.revision,
    }
    export = json.loads((trained.export / "export.json").read_text())
    assert (export["base_model"], export["revision"]) == (entry.hub_id or entry.id, entry.revision)
    assert "path" not in export


def test_no_downloaded_file_holds_a_server_path(trained: Trained) -> None:
    leaks = [
        (path.name, marker)
        for path in trained.downloads()
        for marker in (*trained.server_dirs, *SERVER_MARKERS)
        if marker.encode() in path.read_bytes()
    ]
    assert leaks == []
    assert len(trained.downloads()) >= 15  # three directories were really scanned


def test_checkpoint_adapter_carries_the_tokenizer_and_chat_template(trained: Trained) -> None:
    names = {path.name for path in trained.checkpoint_adapter.iterdir()}
    assert {"tokenizer.json", "tokenizer_config.json", "chat_template.jinja"} <= names
    final = AutoTokenizer.from_pretrained(trained.adapter)
    checkpoint = AutoTokenizer.from_pretrained(trained.checkpoint_adapter)
    assert checkpoint.chat_template == final.chat_template
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    assert checkpoint.apply_chat_template(chat) == final.apply_chat_template(chat)
