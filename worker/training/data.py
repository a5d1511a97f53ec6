"""Turn dataset examples into token ids and labels: loss only where the model should learn.

Labels are -100 (ignored by the loss) except on assistant messages that are trained (weight
not 0), their tool calls included, or on the completion; tool results are never learned, and
`train_on: all` labels every token. Every sequence ends with EOS so a fine-tuned model learns
to stop. Sequences over max_seq_length are cut from the right; one whose prompt alone fills
the window has nothing left to learn and is dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from transformers import PreTrainedTokenizerBase

from app.datasets import DatasetError, Example, Message, read_examples
from worker.training.errors import TrainingInputError

IGNORE_INDEX = -100
TrainOn = Literal["assistant", "all"]


@dataclass(frozen=True, slots=True)
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]

    @property
    def trained_tokens(self) -> int:
        """Tokens the loss is taken on; the first token has nothing before it to predict it."""
        return sum(1 for label in self.labels[1:] if label != IGNORE_INDEX)

    @property
    def prompt_length(self) -> int:
        """Tokens before the first labelled one."""
        return next((i for i, label in enumerate(self.labels) if label != IGNORE_INDEX), 0)


@dataclass(frozen=True, slots=True)
class TokenizedDataset:
    examples: list[TokenizedExample]
    truncated: int  # examples cut to max_seq_length
    dropped: int  # examples whose prompt left no trained token within max_seq_length


def render_chat(
    tokenizer: PreTrainedTokenizerBase,
    messages: Sequence[Message],
    tools: Sequence[dict[str, Any]] = (),
    *,
    add_generation_prompt: bool = False,
) -> str:
    """The conversation as the model's chat template writes it, with its tools if any."""
    conversation = [m.to_template() for m in messages]
    return str(
        tokenizer.apply_chat_template(
            conversation,
            tools=list(tools) or None,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
        )
    )


def check_tools_rendered(example: Example, text: str) -> None:
    """A template that ignores tools would train the model on calls it never sees."""
    missing = [
        call.name
        for message in example.messages
        for call in message.tool_calls
        if call.name not in text
    ] + [tool["function"]["name"] for tool in example.tools if tool["function"]["name"] not in text]
    if missing:
        raise TrainingInputError(
            "chat_template_no_tools",
            f"the model's chat template does not write tools or tool calls ({missing[0]!r} is "
            "missing from the rendered conversation); use a model whose template supports "
            "tools, or a dataset without them",
            "training_file",
        )


def assistant_start(
    tokenizer: PreTrainedTokenizerBase,
    messages: Sequence[Message],
    tools: Sequence[dict[str, Any]],
    index: int,
    before: str,
    upto: str,
) -> int:
    """Where the assistant turn `index` starts learning in `upto`: after its content's header.

    Content is found by its text; a turn of tool calls only starts after the generation
    prompt (the turn header), when the template writes one that `upto` continues.
    """
    message = messages[index]
    content = message.content.strip()
    # rfind: the content follows the turn header, which may contain the same words
    start = upto.rfind(content, len(before)) if content else -1
    if start >= 0 or index == 0:
        return max(start, len(before))
    prompt = render_chat(tokenizer, messages[:index], tools, add_generation_prompt=True)
    if len(before) <= len(prompt) <= len(upto) and upto.startswith(prompt):
        return len(prompt)
    return len(before)


def trained_spans(
    tokenizer: PreTrainedTokenizerBase,
    messages: Sequence[Message],
    text: str,
    tools: Sequence[dict[str, Any]] = (),
) -> list[tuple[int, int]]:
    """Character spans of `text` holding trained assistant turns (content through end of turn).

    Renders each prefix of the conversation: turn i is what rendering messages[: i + 1] adds
    to messages[:i]. Works with any template that renders prefixes as prefixes.
    """
    spans: list[tuple[int, int]] = []
    before = ""
    for index, message in enumerate(messages):
        upto = render_chat(tokenizer, messages[: index + 1], tools)
        if not (text.startswith(upto) and upto.startswith(before)):
            raise TrainingInputError(
                "unsupported_chat_template",
                "the model's chat template does not render a conversation's prefix as a "
                "prefix, so assistant tokens cannot be located; use training.train_on='all'",
                "training.train_on",
            )
        if message.trained:
            start = assistant_start(tokenizer, messages, tools, index, before, upto)
            spans.append((start, len(upto)))
        before = upto
    return spans


def tokenize_chat(
    tokenizer: PreTrainedTokenizerBase,
    messages: Sequence[Message],
    train_on: TrainOn,
    tools: Sequence[dict[str, Any]] = (),
) -> TokenizedExample:
    """Chat through the template (tools too); labels on trained assistant turns (tool calls
    included), or everything."""
    text = render_chat(tokenizer, messages, tools)
    if train_on == "all":
        spans = [(0, len(text))]
    else:
        spans = trained_spans(tokenizer, messages, text, tools)
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    input_ids = list(encoding["input_ids"])
    labels = [
        token if any(start <= begin < end for start, end in spans) else IGNORE_INDEX
        for token, (begin, _) in zip(input_ids, encoding["offset_mapping"], strict=True)
    ]
    if input_ids[-1] != tokenizer.eos_token_id:
        learn_stop = train_on == "all" or messages[-1].trained
        input_ids.append(tokenizer.eos_token_id)
        labels.append(tokenizer.eos_token_id if learn_stop else IGNORE_INDEX)
    return TokenizedExample(input_ids=input_ids, labels=labels)


def tokenize_prompt_completion(
    tokenizer: PreTrainedTokenizerBase, prompt: str, completion: str, train_on: TrainOn
) -> TokenizedExample:
    """BOS (if the tokenizer adds one) + prompt + completion + EOS; labels from the completion."""
    prompt_ids = list(tokenizer(prompt, add_special_tokens=True)["input_ids"])
    completion_ids = [*tokenizer(completion, add_special_tokens=False)["input_ids"]]
    completion_ids.append(tokenizer.eos_token_id)
    prompt_labels = prompt_ids if train_on == "all" else [IGNORE_INDEX] * len(prompt_ids)
    return TokenizedExample(
        input_ids=prompt_ids + completion_ids, labels=prompt_labels + completion_ids
    )


def tokenize_text(tokenizer: PreTrainedTokenizerBase, text: str) -> TokenizedExample:
    """Plain text is learned whole, followed by EOS."""
    input_ids = [*tokenizer(text, add_special_tokens=True)["input_ids"], tokenizer.eos_token_id]
    return TokenizedExample(input_ids=input_ids, labels=list(input_ids))


def tokenize_example(
    tokenizer: PreTrainedTokenizerBase, example: Example, train_on: TrainOn
) -> TokenizedExample:
    """Tokenize one example of any of the three formats, untruncated."""
    if example.format == "chat":
        if example.uses_tools:
            check_tools_rendered(example, render_chat(tokenizer, example.messages, example.tools))
        return tokenize_chat(tokenizer, example.messages, train_on, example.tools)
    if example.format == "prompt_completion":
        return tokenize_prompt_completion(tokenizer, example.prompt, example.completion, train_on)
    return tokenize_text(tokenizer, example.text)


def tokenize_dataset(
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    *,
    max_seq_length: int,
    train_on: TrainOn,
    param: str = "training_file",
) -> TokenizedDataset:
    """Tokenize and truncate every example; raise when nothing is left to learn."""
    kept: list[TokenizedExample] = []
    truncated = 0
    shortest_prompt: int | None = None
    for example in examples:
        tokenized = tokenize_example(tokenizer, example, train_on)
        if len(tokenized.input_ids) > max_seq_length:
            truncated += 1
            prompt_length = tokenized.prompt_length
            tokenized = TokenizedExample(
                tokenized.input_ids[:max_seq_length], tokenized.labels[:max_seq_length]
            )
            if tokenized.trained_tokens == 0:
                shortest_prompt = min(prompt_length, shortest_prompt or prompt_length)
                continue
        kept.append(tokenized)
    if not kept:
        raise empty_after_truncation(len(examples), max_seq_length, shortest_prompt or 0, param)
    return TokenizedDataset(examples=kept, truncated=truncated, dropped=len(examples) - len(kept))


def empty_after_truncation(
    count: int, max_seq_length: int, shortest_prompt: int, param: str
) -> TrainingInputError:
    """The actionable error when every example's prompt fills the sequence limit."""
    advice = (
        f"the shortest prompt is {shortest_prompt} tokens, so with "
        f"training.max_seq_length={max_seq_length} no assistant or completion token fits; "
        f"raise training.max_seq_length above {shortest_prompt} or shorten the prompts"
    )
    if param == "training_file":
        return TrainingInputError(
            "max_seq_length_below_prompt",
            f"all {count} training examples were dropped: {advice}",
            "training.max_seq_length",
        )
    return TrainingInputError(
        "empty_dataset_after_truncation",
        f"all {count} examples of the {param} were dropped after truncation: {advice}",
        param,
    )


def read_dataset(path: Path, param: str) -> list[Example]:
    """A dataset's examples by the API's own parser; a missing or invalid file is the user's
    error, named by `param`."""
    try:
        return read_examples(path)
    except FileNotFoundError as exc:
        raise TrainingInputError("file_not_found", f"{param} {path} does not exist", param) from exc
    except DatasetError as exc:
        raise TrainingInputError("invalid_file", f"{param} is invalid: {exc}", param) from exc


def load_dataset(
    path: Path,
    tokenizer: PreTrainedTokenizerBase,
    *,
    max_seq_length: int,
    train_on: TrainOn,
    param: str = "training_file",
) -> TokenizedDataset:
    """Read a JSONL dataset with the API's own parser and tokenize it."""
    examples = read_dataset(path, param)
    return tokenize_dataset(
        tokenizer, examples, max_seq_length=max_seq_length, train_on=train_on, param=param
    )
