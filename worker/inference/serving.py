"""Chat completions and completions: a request becomes choices on a base's runner, and their
events become an OpenAI response or its stream of chunks."""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool
from transformers import PreTrainedTokenizerBase

from app.schemas.completions import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChunkDelta,
    Completion,
    CompletionChoice,
    CompletionRequest,
    SamplingRequest,
    Usage,
)
from worker.inference.engine import BaseRunner, Choice, ChoiceEvent, InferenceError
from worker.inference.registry import ModelRegistry
from worker.inference.sampling import SamplingParams

DONE = b"data: [DONE]\n\n"


class Generation:
    """The choices of one request, fed by the runner's thread into this event loop."""

    def __init__(self, choices: int) -> None:
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[ChoiceEvent] = asyncio.Queue()
        self.choices = choices
        self.cancelled = threading.Event()

    def emit(self, event: ChoiceEvent) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, event)

    async def events(self) -> AsyncIterator[ChoiceEvent]:
        """Every event until each choice has finished; a failed step raises here."""
        open_choices = self.choices
        try:
            while open_choices:
                event = await self.queue.get()
                if event.error is not None:
                    raise event.error
                if event.finish_reason is not None:
                    open_choices -= 1
                yield event
        finally:
            self.cancelled.set()  # finished, failed or abandoned: the runner drops what is left


@dataclass
class Prepared:
    """A request resolved against a runner: the prompt's tokens and how to generate."""

    runner: BaseRunner
    adapter: str | None
    tokenizer: PreTrainedTokenizerBase
    prompt_ids: list[int]
    max_new_tokens: int


class OpenAIServing:
    """Runs chat completions and completions on the registry's models."""

    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry

    async def chat(self, request: ChatCompletionRequest) -> ChatCompletion | AsyncIterator[bytes]:
        def prompt(tokenizer: PreTrainedTokenizerBase) -> list[int]:
            conversation = [
                {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                for m in request.messages
            ]
            text = tokenizer.apply_chat_template(
                conversation, tokenize=False, add_generation_prompt=True
            )
            return list(tokenizer(str(text), add_special_tokens=False)["input_ids"])

        prepared = await run_in_threadpool(self._prepare, request, prompt)
        generation = self._start(request, prepared)
        response = ChatResponse(request, prepared, new_id("chatcmpl"))
        if request.stream:
            return response.stream(generation)
        return await response.collect(generation)

    async def complete(self, request: CompletionRequest) -> Completion | AsyncIterator[bytes]:
        def prompt(tokenizer: PreTrainedTokenizerBase) -> list[int]:
            return list(tokenizer(request.prompt_text(), add_special_tokens=True)["input_ids"])

        prepared = await run_in_threadpool(self._prepare, request, prompt)
        generation = self._start(request, prepared)
        response = CompletionResponse(request, prepared, new_id("cmpl"))
        if request.stream:
            return response.stream(generation)
        return await response.collect(generation)

    def _prepare(
        self,
        request: ChatCompletionRequest | CompletionRequest,
        prompt: Callable[[PreTrainedTokenizerBase], list[int]],
    ) -> Prepared:
        """Resolve the model (loading its base on first use) and tokenize the prompt."""
        runner, adapter = self.registry.resolve(request.model)
        tokenizer = runner.tokenizer_for(adapter)
        prompt_ids = prompt(tokenizer)
        room = runner.context_length - len(prompt_ids)
        if room <= 0:
            raise InferenceError(
                400,
                "context_length_exceeded",
                f"This model's maximum context length is {runner.context_length} tokens; "
                f"the prompt has {len(prompt_ids)}.",
                "messages" if isinstance(request, ChatCompletionRequest) else "prompt",
            )
        limit = request.token_limit()
        return Prepared(runner, adapter, tokenizer, prompt_ids, min(limit or room, room))

    def _start(self, request: SamplingRequest, prepared: Prepared) -> Generation:
        generation = Generation(request.n)
        stop_ids = end_of_text_ids(prepared)
        for index in range(request.n):
            seed = None if request.seed is None else request.seed + index
            params = SamplingParams(
                max_new_tokens=prepared.max_new_tokens,
                temperature=request.temperature,
                top_p=request.top_p,
                stop=tuple(request.stop_sequences()),
                seed=seed,
            )
            prepared.runner.submit(
                Choice(
                    index=index,
                    adapter=prepared.adapter,
                    prompt_ids=prepared.prompt_ids,
                    params=params,
                    tokenizer=prepared.tokenizer,
                    stop_ids=stop_ids,
                    emit=generation.emit,
                    cancelled=generation.cancelled,
                )
            )
        return generation


def end_of_text_ids(prepared: Prepared) -> frozenset[int]:
    """The tokenizer's EOS and the model's generation config's end-of-text ids."""
    ids: set[int] = set()
    for value in (
        prepared.tokenizer.eos_token_id,
        prepared.runner.base.generation_config.eos_token_id,
    ):
        if isinstance(value, int):
            ids.add(value)
        elif value:
            ids.update(int(v) for v in value)
    return frozenset(ids)


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def sse(payload: str) -> bytes:
    return f"data: {payload}\n\n".encode()


class _Response:
    """What chat and completion responses share: the request, its prompt and the totals."""

    def __init__(self, request: SamplingRequest, prepared: Prepared, response_id: str) -> None:
        self.request = request
        self.prepared = prepared
        self.id = response_id
        self.created = int(time.time())
        self.completion_tokens = 0

    def usage(self) -> Usage:
        prompt_tokens = len(self.prepared.prompt_ids) * self.request.n
        return Usage(
            prompt_tokens=prompt_tokens,
            completion_tokens=self.completion_tokens,
            total_tokens=prompt_tokens + self.completion_tokens,
        )

    async def gather(self, generation: Generation) -> tuple[list[str], list[str]]:
        """Each choice's whole text and finish reason."""
        texts = [""] * self.request.n
        reasons = ["stop"] * self.request.n
        async for event in generation.events():
            texts[event.index] += event.text
            if event.finish_reason is not None:
                reasons[event.index] = event.finish_reason
                self.completion_tokens += event.completion_tokens
        return texts, reasons


class ChatResponse(_Response):
    async def collect(self, generation: Generation) -> ChatCompletion:
        texts, reasons = await self.gather(generation)
        choices = [
            ChatChoice(
                index=i,
                message=AssistantMessage(content=text),
                finish_reason=reason,  # type: ignore[arg-type]
            )
            for i, (text, reason) in enumerate(zip(texts, reasons, strict=True))
        ]
        return ChatCompletion(
            id=self.id,
            created=self.created,
            model=self.request.model,
            choices=choices,
            usage=self.usage(),
        )

    def chunk(self, choices: list[ChatChunkChoice], usage: Usage | None = None) -> bytes:
        chunk = ChatCompletionChunk(
            id=self.id, created=self.created, model=self.request.model, choices=choices, usage=usage
        )
        return sse(chunk.model_dump_json(exclude={"usage"} if usage is None else None))

    async def stream(self, generation: Generation) -> AsyncIterator[bytes]:
        for index in range(self.request.n):
            yield self.chunk(
                [ChatChunkChoice(index=index, delta=ChunkDelta(role="assistant", content=""))]
            )
        async for event in generation.events():
            if event.text:
                yield self.chunk(
                    [ChatChunkChoice(index=event.index, delta=ChunkDelta(content=event.text))]
                )
            if event.finish_reason is not None:
                self.completion_tokens += event.completion_tokens
                yield self.chunk(
                    [
                        ChatChunkChoice(
                            index=event.index,
                            delta=ChunkDelta(),
                            finish_reason=event.finish_reason,  # type: ignore[arg-type]
                        )
                    ]
                )
        if self.request.include_usage():
            yield self.chunk([], usage=self.usage())
        yield DONE


class CompletionResponse(_Response):
    async def collect(self, generation: Generation) -> Completion:
        texts, reasons = await self.gather(generation)
        choices = [
            CompletionChoice(index=i, text=text, finish_reason=reason)  # type: ignore[arg-type]
            for i, (text, reason) in enumerate(zip(texts, reasons, strict=True))
        ]
        return Completion(
            id=self.id,
            created=self.created,
            model=self.request.model,
            choices=choices,
            usage=self.usage(),
        )

    def chunk(self, choices: list[CompletionChoice], usage: Usage | None = None) -> bytes:
        chunk = Completion(
            id=self.id, created=self.created, model=self.request.model, choices=choices, usage=usage
        )
        return sse(chunk.model_dump_json(exclude={"usage"} if usage is None else None))

    async def stream(self, generation: Generation) -> AsyncIterator[bytes]:
        async for event in generation.events():
            if event.finish_reason is not None:
                self.completion_tokens += event.completion_tokens
            if event.text or event.finish_reason is not None:
                choice = CompletionChoice(
                    index=event.index,
                    text=event.text,
                    finish_reason=event.finish_reason,  # type: ignore[arg-type]
                )
                yield self.chunk([choice])
        if self.request.include_usage():
            yield self.chunk([], usage=self.usage())
        yield DONE
