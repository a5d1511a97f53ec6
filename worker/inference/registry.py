"""Which model a request names: a catalog base (loaded on first use, once) or a loaded
adapter, and where an adapter's files are (a path on this machine, or a storage key fetched
into the local cache when artifacts live in a bucket)."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

from app.catalog import CatalogEntry
from app.config import Settings
from app.schemas.spec import QuantizationSpec
from app.storage import Storage, check_key
from worker.inference.engine import BaseRunner, InferenceError

log = logging.getLogger(__name__)


class ModelRegistry:
    """The bases this server has loaded, and the adapters loaded on each."""

    def __init__(self, settings: Settings, storage: Storage) -> None:
        self.settings = settings
        self.storage = storage
        self.catalog = settings.catalog()
        self.runners: dict[str, BaseRunner] = {}
        self.adapter_bases: dict[str, str] = {}
        self._loading = threading.Lock()  # one base loads at a time, and only once

    def runner(self, base: str) -> BaseRunner:
        """The base's runner, loading the model on first use (blocking: call from a thread)."""
        entry = self.catalog.get(base)
        if entry is None:
            raise model_not_found(base)
        with self._loading:
            if base not in self.runners:
                self.runners[base] = load_runner(entry, self.settings)
            return self.runners[base]

    def resolve(self, model: str) -> tuple[BaseRunner, str | None]:
        """(runner, adapter name or None) for a request's `model`."""
        base = self.adapter_bases.get(model)
        if base is not None:
            return self.runner(base), model
        return self.runner(model), None

    def load_adapter(self, name: str, lora_path: str) -> bool:
        """Load the adapter at `lora_path` on the base it was trained on."""
        if name in self.catalog:
            raise InferenceError(
                400, "invalid_adapter_name", f"{name!r} names a base model", "lora_name"
            )
        path = self.adapter_dir(lora_path)
        base = self.base_of(path)
        runner = self.runner(base)
        try:
            loaded = runner.load_adapter(name, path)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise InferenceError(
                400, "invalid_adapter", f"the adapter could not be loaded: {exc}", "lora_path"
            ) from exc
        self.adapter_bases[name] = base
        self._forget_evicted()
        return loaded

    def unload_adapter(self, name: str) -> None:
        base = self.adapter_bases.pop(name, None)
        if base is None or not self.runners[base].unload_adapter(name):
            raise InferenceError(404, "adapter_not_found", f"no adapter {name!r} is loaded")

    def adapter_dir(self, lora_path: str) -> Path:
        """A local directory holding the adapter. An absolute path must lie in this
        server's data or cache dir; anything else is a storage key, fetched from storage."""
        if lora_path.startswith("/"):
            path = Path(lora_path).resolve()
            roots = [self.settings.data_dir.resolve(), self.settings.resolved_cache_dir().resolve()]
            if not any(path.is_relative_to(root) for root in roots):
                raise InferenceError(
                    400, "invalid_adapter_path", "lora_path is outside the data dir", "lora_path"
                )
            return path
        try:
            key = check_key(lora_path.rstrip("/"))
        except ValueError as exc:
            raise InferenceError(400, "invalid_adapter_path", str(exc), "lora_path") from exc
        local = self.storage.local_path(key)
        if local is not None:
            return local
        directory = self.storage.workspace(f"{key}.inference")
        self.storage.pull(key, directory)
        return directory

    def base_of(self, adapter_dir: Path) -> str:
        """The catalog base an adapter names in adapter_config.json (by name, hub id, or the
        directory the worker loaded it from)."""
        config_file = adapter_dir / "adapter_config.json"
        if not config_file.is_file():
            raise InferenceError(
                400, "invalid_adapter", "no adapter_config.json at lora_path", "lora_path"
            )
        named = str(json.loads(config_file.read_text()).get("base_model_name_or_path") or "")
        for entry in self.catalog.values():
            if named in (entry.id, entry.hub_id) or _same_dir(named, entry, self.settings):
                return entry.id
        raise InferenceError(
            400,
            "unknown_base_model",
            f"the adapter was trained on {named!r}, which is not in this server's catalog",
            "lora_path",
        )

    def models(self) -> list[tuple[str, str | None]]:
        """(id, base or None) of every base in the catalog and every loaded adapter."""
        return [(base, None) for base in self.catalog] + sorted(self.adapter_bases.items())

    def _forget_evicted(self) -> None:
        for name, base in list(self.adapter_bases.items()):
            if name not in self.runners[base].adapters:
                del self.adapter_bases[name]


def _same_dir(named: str, entry: CatalogEntry, settings: Settings) -> bool:
    if not named.startswith("/"):
        return False
    from worker.training.models import resolve_model_dir

    try:
        return Path(named).resolve() == resolve_model_dir(entry, settings.models_dir).resolve()
    except Exception:  # a model not installed here is not this adapter's base
        return False


def model_not_found(model: str) -> InferenceError:
    return InferenceError(404, "model_not_found", f"The model `{model}` does not exist.", "model")


def load_runner(entry: CatalogEntry, settings: Settings) -> BaseRunner:
    """The base in the quantization jobs train it in by default (NF4 with double
    quantization, the device's compute dtype), so a fine-tuned model answers as it did
    while it was trained."""
    import torch

    from worker.training.builders import build_quantization_config
    from worker.training.config import default_compute_dtype, detect_device
    from worker.training.models import (
        inference_mode,
        load_base_model,
        load_tokenizer,
        resolve_model_dir,
    )

    device = detect_device()
    dtype = getattr(torch, default_compute_dtype(device))
    model_dir = resolve_model_dir(entry, settings.models_dir)
    model = load_base_model(
        model_dir,
        entry,
        dtype=dtype,
        device=device,
        quantization_config=build_quantization_config(QuantizationSpec(), dtype),
    )
    inference_mode(model)
    log.info("loaded %s on %s", entry.id, device)
    tokenizer = load_tokenizer(model_dir, entry)
    return BaseRunner(entry, model, tokenizer, settings.inference_max_adapters)
