"""The built-in `loraforge/tiny-random-llama`: generated on first use, offline, deterministically.

A small Llama (shape in app.memory.TINY_RANDOM_LLAMA_SHAPE) with seeded random weights and a
byte-level BPE tokenizer trained on the corpus shipped in assets/. It exists so every flow
runs without a download: tests, demos, a laptop without a GPU.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from app.memory import TINY_RANDOM_LLAMA_SHAPE, ModelShape

# Bump when the generator changes, so caches of an older model are not reused.
TINY_VERSION = "v2"
TINY_SEED = 1234
# Wider than Llama's 0.02: with a frozen random head of std 0.02 the logits cannot spread
# more than a few units, so no adapter could fit even a repetitive dataset.
INIT_RANGE = 0.1
MAX_POSITIONS = 2048
# Model init draws from torch's global generator: one generation at a time per process.
_GENERATION_LOCK = threading.Lock()
BOS, EOS, PAD = "<s>", "</s>", "<pad>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
# Each turn is "<|role|>\n" + content + EOS. Assistant content and its EOS sit inside
# {% generation %} so tools that read assistant masks from the template (trl) work too.
# Tools (a system turn listing them), tool calls (<tool_call>{"name", "arguments"}</tool_call>
# in the assistant turn) and tool results (a <|tool|> turn) as Hermes-style templates write
# them; a conversation without tools renders as it did before they were added.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% if tools %}<|system|>\nYou may call these functions:\n"
    "{% for tool in tools %}{{ (tool['function'] if tool['function'] is defined else tool)"
    " | tojson }}\n{% endfor %}{{ eos_token }}{% endif %}"
    "{% for message in messages %}<|{{ message['role'] }}|>\n"
    "{% if message['role'] == 'assistant' %}{% generation %}"
    "{% if message['content'] %}{{ message['content'] }}{% endif %}"
    "{% if message['tool_calls'] %}{% for call in message['tool_calls'] %}<tool_call>"
    "{{ {'name': call['function']['name'], 'arguments': call['function']['arguments']}"
    " | tojson }}</tool_call>{% endfor %}{% endif %}"
    "{{ eos_token }}{% endgeneration %}{% else %}{{ message['content'] }}{{ eos_token }}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def tiny_model_dir(models_dir: Path) -> Path:
    """Where the generated model lives under the models cache."""
    return models_dir / "loraforge--tiny-random-llama" / TINY_VERSION


def ensure_tiny_model(models_dir: Path) -> Path:
    """Return the tiny model's directory, generating it first if it is not cached yet."""
    target = tiny_model_dir(models_dir)
    if not (target / "config.json").exists():
        write_tiny_model(target)
    return target


def write_tiny_model(target: Path) -> None:
    """Generate the model into `target` (which must not exist yet, or be an empty directory).

    Every machine writes the same bytes (`loraforge models pull` relies on it): seeded
    weights, a tokenizer trained deterministically on the shipped corpus.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tiny-", dir=target.parent))
    try:
        build_tokenizer().save_pretrained(staging)
        build_model().save_pretrained(staging)
        try:
            # atomic: a racing process either wins or sees ours; an empty target is replaced
            os.rename(staging, target)
        except OSError:
            if not (target / "config.json").exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def read_corpus() -> list[str]:
    """The shipped corpus, one paragraph per item."""
    text = resources.files("worker.training").joinpath("assets/corpus.txt").read_text("utf-8")
    return [paragraph for paragraph in text.split("\n\n") if paragraph.strip()]


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (no unknown tokens) trained on the shipped corpus."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_RANDOM_LLAMA_SHAPE.vocab_size,
        special_tokens=[PAD, BOS, EOS, *ROLE_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(read_corpus(), trainer)
    bos_id = tokenizer.token_to_id(BOS)
    # Plain text gets a BOS like Llama's tokenizer; chat templates write their own.
    tokenizer.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
            ),
        ]
    )
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=BOS, eos_token=EOS, pad_token=PAD
    )
    wrapped.chat_template = CHAT_TEMPLATE
    wrapped.model_max_length = MAX_POSITIONS
    return wrapped


def llama_config(shape: ModelShape, **settings: Any) -> LlamaConfig:
    """A Llama config of `shape`; `settings` give the rest (positions, init range, token ids)."""
    return LlamaConfig(
        vocab_size=shape.vocab_size,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_hidden_layers,
        num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_key_value_heads,
        tie_word_embeddings=shape.tie_word_embeddings,
        **settings,
    )


def build_config() -> LlamaConfig:
    """The tiny Llama's config, from the shape the API's memory estimator also uses."""
    return llama_config(
        TINY_RANDOM_LLAMA_SHAPE,
        max_position_embeddings=MAX_POSITIONS,
        initializer_range=INIT_RANGE,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )


def build_model() -> LlamaForCausalLM:
    """Random weights from a fixed seed, so every machine generates the same model."""
    with _GENERATION_LOCK:
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(TINY_SEED)
        try:
            return LlamaForCausalLM(build_config())
        finally:
            torch.random.set_rng_state(generator_state)
