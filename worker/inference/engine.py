"""Base models loaded once each, LoRA adapters hot-loaded into an LRU, and a scheduler that
generates for every open request at once.

Each base has one thread that owns its model: it takes the open choices in turn and
computes one token of one choice per step (prefill first, then one token against the
choice's own KV cache), switching the active adapter between steps. Every stream
progresses, a new request starts at the next step rather than after the others finish,
and a choice whose client went away is dropped at its next turn.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from app.catalog import CatalogEntry
from worker.inference.sampling import SamplingParams, TextTracker, new_generator, next_token
from worker.training.models import inference_mode

log = logging.getLogger(__name__)

Emit = Callable[["ChoiceEvent"], None]


class InferenceError(Exception):
    """A request the server refuses; `status` and `code` become the OpenAI error."""

    def __init__(self, status: int, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.param = status, code, message, param


@dataclass(frozen=True)
class ChoiceEvent:
    """New text of one choice, or its end (`finish_reason`, tokens generated)."""

    index: int
    text: str = ""
    finish_reason: str | None = None
    completion_tokens: int = 0
    error: BaseException | None = None


@dataclass
class Choice:
    """One sequence being generated: its prompt, cache, tokens so far and where they go."""

    index: int
    adapter: str | None
    prompt_ids: list[int]
    params: SamplingParams
    tokenizer: PreTrainedTokenizerBase
    stop_ids: frozenset[int]
    emit: Emit
    cancelled: threading.Event
    generated: list[int] = field(default_factory=list)
    cache: Any = None

    def __post_init__(self) -> None:
        self.generator = new_generator(self.params.seed)
        self.text = TextTracker(self.params.stop)


@dataclass
class LoadedAdapter:
    name: str
    path: Path
    tokenizer: PreTrainedTokenizerBase


class BaseRunner:
    """One base model and its adapters, driven by one scheduler thread."""

    def __init__(
        self,
        entry: CatalogEntry,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        max_adapters: int,
    ) -> None:
        self.entry = entry
        self.base = model
        self.model: PreTrainedModel | PeftModel = model
        self.tokenizer = tokenizer
        self.max_adapters = max_adapters
        self.device = model.device
        self.context_length = int(getattr(model.config, "max_position_embeddings", 2048))
        self.adapters: OrderedDict[str, LoadedAdapter] = OrderedDict()
        self._model_lock = threading.Lock()  # steps, loads and unloads take turns
        self._open: deque[Choice] = deque()
        self._current: Choice | None = None  # taken from _open, its step not done yet
        self._wakeup = threading.Condition()
        self._thread = threading.Thread(target=self._run, name=f"generate-{entry.id}", daemon=True)
        self._thread.start()

    # -- adapters ----------------------------------------------------------------------

    def load_adapter(self, name: str, path: Path) -> bool:
        """Load `path` as `name` (False when it already is); the least recently used idle
        adapter makes room past max_adapters."""
        with self._model_lock:
            loaded = self.adapters.get(name)
            if loaded is not None:
                if loaded.path != path:
                    raise InferenceError(
                        400,
                        "adapter_name_in_use",
                        f"an adapter named {name!r} is already loaded from another path",
                        "lora_name",
                    )
                self.adapters.move_to_end(name)
                return False
            self._evict_idle()
            if isinstance(self.model, PeftModel):
                self.model.load_adapter(str(path), adapter_name=name)
            else:
                self.model = PeftModel.from_pretrained(self.base, str(path), adapter_name=name)
            # peft switches the whole model to eval mode: on a CPU with AVX512-BF16 that lets
            # bitsandbytes repack its 4-bit weights at their next forward, after which answers
            # depend on the order requests came in. The training path never repacks.
            inference_mode(self.model)
            self.adapters[name] = LoadedAdapter(name, path, adapter_tokenizer(path, self.tokenizer))
            log.info("loaded adapter %s on %s", name, self.entry.id)
            return True

    def unload_adapter(self, name: str) -> bool:
        with self._model_lock:
            if name not in self.adapters:
                return False
            self._delete(name)
            return True

    def tokenizer_for(self, adapter: str | None) -> PreTrainedTokenizerBase:
        """The adapter's own tokenizer and chat template (saved with it), or the base's."""
        if adapter is None:
            return self.tokenizer
        with self._model_lock:
            self.adapters.move_to_end(adapter)
            return self.adapters[adapter].tokenizer

    def _evict_idle(self) -> None:
        with self._wakeup:
            busy = {choice.adapter for choice in [*self._open, self._current] if choice}
        for name in list(self.adapters):
            if len(self.adapters) < self.max_adapters:
                return
            if name not in busy:
                self._delete(name)

    def _delete(self, name: str) -> None:
        assert isinstance(self.model, PeftModel)
        self.adapters.pop(name)
        if not self.adapters:
            # peft keeps at least one adapter: the last one goes with its wrapper.
            self.base = self.model.unload()
            self.model = self.base
        else:
            if name in self.model.active_adapters:
                self.model.set_adapter(next(iter(self.adapters)))
            self.model.delete_adapter(name)
        log.info("unloaded adapter %s from %s", name, self.entry.id)

    # -- generation --------------------------------------------------------------------

    def submit(self, choice: Choice) -> None:
        with self._wakeup:
            self._open.append(choice)
            self._wakeup.notify()

    def open_choices(self) -> int:
        return len(self._open)

    def _run(self) -> None:
        while True:
            with self._wakeup:
                self._current = None
                while not self._open:
                    self._wakeup.wait()
                choice = self._current = self._open.popleft()
            if choice.cancelled.is_set():
                continue
            try:
                finished = self._step(choice)
            except Exception as exc:  # a broken request must not stop the others
                log.exception("generation failed")
                choice.emit(ChoiceEvent(choice.index, error=exc))
                continue
            if not finished:
                with self._wakeup:
                    self._open.append(choice)

    def _step(self, choice: Choice) -> bool:
        """One token of `choice`; True once it has finished."""
        with self._model_lock, torch.inference_mode(), self._active(choice.adapter):
            new_ids = choice.prompt_ids if choice.cache is None else choice.generated[-1:]
            length = len(choice.prompt_ids) + len(choice.generated)
            output = self.model(
                input_ids=torch.tensor([new_ids], device=self.device),
                attention_mask=torch.ones(1, length, dtype=torch.long, device=self.device),
                cache=choice.cache,
                use_cache=True,
            )
            choice.cache = output.cache
            logits = output.logits[0, -1]
        token = next_token(logits, choice.params, choice.generator)
        choice.generated.append(token)
        stopped_by_token = token in choice.stop_ids
        ids = choice.generated[:-1] if stopped_by_token else choice.generated
        text = str(choice.tokenizer.decode(ids, skip_special_tokens=True))
        delta = choice.text.advance(text)
        if stopped_by_token or choice.text.stopped:
            return self._finish(choice, delta, "stop")
        if len(choice.generated) >= choice.params.max_new_tokens:
            return self._finish(choice, delta + choice.text.flush(text), "length")
        if delta:
            choice.emit(ChoiceEvent(choice.index, text=delta))
        return False

    def _finish(self, choice: Choice, delta: str, reason: str) -> bool:
        choice.emit(
            ChoiceEvent(
                choice.index,
                text=delta,
                finish_reason=reason,
                completion_tokens=len(choice.generated),
            )
        )
        choice.cache = None
        return True

    @contextmanager
    def _active(self, adapter: str | None) -> Iterator[None]:
        """The adapter the next step computes with; the bare base when None."""
        if not isinstance(self.model, PeftModel):
            yield
            return
        if adapter is None:
            with self.model.disable_adapter():
                yield
            return
        if self.model.active_adapter != adapter:
            self.model.set_adapter(adapter)
        with nullcontext():
            yield


def adapter_tokenizer(path: Path, fallback: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """The tokenizer saved with an adapter (the one it was trained with), else the base's."""
    if not (path / "tokenizer_config.json").is_file():
        return fallback
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not tokenizer.chat_template:
        tokenizer.chat_template = fallback.chat_template
    return tokenizer
