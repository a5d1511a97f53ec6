"""Loading a base model runs no code that came with it: pickle weights are refused (and never
unpickled), and a model that needs its own Python code is refused unless its catalog entry
says trust_remote_code. Each trap writes a marker file if it ever runs."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

torch = pytest.importorskip("torch")  # the worker extra
from app.catalog import CatalogEntry  # noqa: E402
from worker.training.errors import TrainingInputError  # noqa: E402
from worker.training.models import (  # noqa: E402
    load_base_model,
    load_tokenizer,
    resolve_model_dir,
)
from worker.training.tiny import ensure_tiny_model  # noqa: E402

pytestmark = pytest.mark.slow


class Trap:
    """Unpickling this object creates `marker`: proof that a pickle was loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.mkdir, (str(self.marker),))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_tiny_model(tmp_path_factory.mktemp("models"))


def pickled_model(tmp_path: Path, tiny: Path) -> tuple[Path, Path]:
    """The tiny model's config and tokenizer with a booby-trapped pytorch_model.bin only."""
    directory = tmp_path / "pickled"
    shutil.copytree(tiny, directory)
    for weights in directory.glob("*.safetensors*"):
        weights.unlink()
    marker = tmp_path / "unpickled"
    (directory / "pytorch_model.bin").write_bytes(pickle.dumps(Trap(marker)))
    return directory, marker


def test_pickle_only_weights_are_refused_with_a_clear_error(tmp_path: Path, tiny: Path):
    directory, marker = pickled_model(tmp_path, tiny)
    entry = CatalogEntry(id="acme/pickled", path=str(directory))
    with pytest.raises(TrainingInputError) as refused:
        resolve_model_dir(entry, tmp_path / "models")
    assert (refused.value.code, refused.value.param) == ("model_weights_not_safetensors", "model")
    assert "safetensors" in refused.value.message
    assert not marker.exists()


def test_loading_never_falls_back_to_pickle_weights(tmp_path: Path, tiny: Path):
    """Even past the directory check, from_pretrained is told safetensors only."""
    directory, marker = pickled_model(tmp_path, tiny)
    entry = CatalogEntry(id="acme/pickled", path=str(directory))
    with pytest.raises((OSError, ValueError)):
        load_base_model(directory, entry, dtype=torch.float32, device="cpu")
    assert not marker.exists()


def remote_code_model(tmp_path: Path, tiny: Path) -> tuple[Path, Path]:
    """A model whose type transformers does not know: only its own modeling code loads it."""
    directory = tmp_path / "remote"
    shutil.copytree(tiny, directory)
    marker = tmp_path / "remote-code-ran"
    trap = f"import os\nos.mkdir({str(marker)!r})\n"
    for name in ("configuration_evil.py", "modeling_evil.py", "tokenization_evil.py"):
        (directory / name).write_text(trap)
    config = json.loads((directory / "config.json").read_text())
    config["model_type"] = "evil-llama"
    config["auto_map"] = {
        "AutoConfig": "configuration_evil.EvilConfig",
        "AutoModelForCausalLM": "modeling_evil.EvilForCausalLM",
    }
    (directory / "config.json").write_text(json.dumps(config))
    return directory, marker


def test_a_model_that_needs_its_own_code_is_refused_without_trust(tmp_path: Path, tiny: Path):
    directory, marker = remote_code_model(tmp_path, tiny)
    entry = CatalogEntry(id="acme/remote", path=str(directory))
    assert entry.trust_remote_code is False  # the default
    with pytest.raises(ValueError, match="trust_remote_code"):
        load_base_model(directory, entry, dtype=torch.float32, device="cpu")
    assert not marker.exists()


def test_the_tokenizer_loads_without_remote_code(tmp_path: Path, tiny: Path):
    directory = tmp_path / "tokenizer"
    shutil.copytree(tiny, directory)
    marker = tmp_path / "tokenizer-code-ran"
    (directory / "tokenization_evil.py").write_text(f"import os\nos.mkdir({str(marker)!r})\n")
    tokenizer_config = json.loads((directory / "tokenizer_config.json").read_text())
    tokenizer_config["auto_map"] = {"AutoTokenizer": [None, "tokenization_evil.EvilTokenizer"]}
    (directory / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    tokenizer = load_tokenizer(directory, CatalogEntry(id="acme/tok", path=str(directory)))
    assert tokenizer.is_fast
    assert not marker.exists()


def test_a_missing_model_is_named_without_the_servers_path(tmp_path: Path):
    directory = tmp_path / "secret-mount" / "llama"
    entry = CatalogEntry(id="acme/llama", path=str(directory))
    with pytest.raises(TrainingInputError) as refused:
        resolve_model_dir(entry, tmp_path / "models")
    assert refused.value.code == "model_not_found"
    assert "acme/llama" in refused.value.message
    assert str(tmp_path) not in refused.value.message
