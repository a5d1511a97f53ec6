"""Chat completions and completions in OpenAI's shapes: what the API accepts and forwards, and
what an inference server (loraforge's own, or vLLM) answers.

The API validates a request with these models before it reaches a backend, so a bad request
is a 400 naming its parameter wherever it would be generated. Parameters that OpenAI
documents and generation here does not implement (logprobs, tools, penalties...) are refused
by name rather than accepted and ignored.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.schemas.common import NO_CONTROL_CHARACTERS

MAX_CHOICES = 8
MAX_STOP_SEQUENCES = 4
Role = Literal["system", "developer", "user", "assistant"]


class StrictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextPart(StrictRequest):
    type: Literal["text"]
    text: str


class ChatMessage(StrictRequest):
    role: Role
    content: str | list[TextPart]
    name: str | None = None

    def text(self) -> str:
        """The content as one string (text parts joined, as OpenAI reads them)."""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(StrictRequest):
    include_usage: bool = False


class SamplingRequest(StrictRequest):
    """What chat completions and completions share."""

    # Looked up in the database, which holds no control characters (PostgreSQL refuses NUL).
    model: Annotated[str, Field(min_length=1, max_length=512, pattern=NO_CONTROL_CHARACTERS)]
    temperature: Annotated[float, Field(ge=0, le=2)] = 1.0
    top_p: Annotated[float, Field(gt=0, le=1)] = 1.0
    n: Annotated[int, Field(ge=1, le=MAX_CHOICES)] = 1
    stop: str | Annotated[list[str], Field(max_length=MAX_STOP_SEQUENCES)] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    user: Annotated[str, Field(max_length=256)] | None = None

    def stop_sequences(self) -> list[str]:
        if self.stop is None:
            return []
        return [s for s in ([self.stop] if isinstance(self.stop, str) else self.stop) if s]

    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(SamplingRequest):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None

    def token_limit(self) -> int | None:
        """max_completion_tokens, or the older max_tokens it replaces."""
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(SamplingRequest):
    prompt: str | Annotated[list[str], Field(min_length=1, max_length=1)]
    # OpenAI's legacy completions default to 16 tokens.
    max_tokens: Annotated[int, Field(ge=1)] | None = 16

    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]

    def token_limit(self) -> int | None:
        return self.max_tokens


class LoadLoraAdapterRequest(StrictRequest):
    """vLLM's runtime adapter loading: the adapter's name in requests, and where it is."""

    lora_name: Annotated[str, Field(min_length=1, max_length=512)]
    lora_path: Annotated[str, Field(min_length=1, max_length=4096)]


class UnloadLoraAdapterRequest(StrictRequest):
    lora_name: Annotated[str, Field(min_length=1, max_length=512)]


FinishReason = Literal["stop", "length"]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str
    refusal: None = None


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: FinishReason
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str | None = None


class ChunkDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: ChunkDelta
    finish_reason: FinishReason | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: FinishReason | None
    logprobs: None = None


class Completion(BaseModel):
    """A completion, and each chunk of a streamed one (OpenAI uses one shape for both)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class InferenceModel(BaseModel):
    """An entry of an inference server's /v1/models: a base, or an adapter on one."""

    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "loraforge"
    root: str | None = None
    parent: str | None = None


class InferenceModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[InferenceModel]
