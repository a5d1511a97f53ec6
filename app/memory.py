"""How much accelerator memory a QLoRA job needs, from the spec and the model's shape alone.

Pure Python (no torch): the API uses it to refuse jobs that cannot fit and to route jobs to a
GPU class. The estimate is for a CUDA device; it is an upper-bound style sum of the parts
QLoRA (Dettmers et al. 2023) names: quantized base weights, unquantized embeddings and head, LoRA
parameters with their gradients and optimizer state, activations, and the CUDA context.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from app.schemas.spec import ResolvedSpec

MiB = 1 << 20
# The CUDA context, cuBLAS workspaces and allocator slack: measured 300-700 MiB on recent GPUs.
CUDA_CONTEXT_BYTES = 512 * MiB

# NF4/FP4 store 4 bits per weight plus one absmax per block of 64 weights. Without double
# quantization the absmax is fp32 (32/64 = 0.5 bit/weight); double quantization stores it in
# 8 bits and adds one fp32 scale per 256 absmax values: 8/64 + 32/(64*256) = 0.127 bit/weight.
BLOCKSIZE_4BIT = 64
BLOCKSIZE_NESTED = 256
BITS_4BIT_DOUBLE_QUANT = 4 + 8 / BLOCKSIZE_4BIT + 32 / (BLOCKSIZE_4BIT * BLOCKSIZE_NESTED)
BITS_4BIT = 4 + 32 / BLOCKSIZE_4BIT
# LLM.int8 stores int8 weights plus one fp32 scale per output row (8 + 32/d_in bits/weight).
BITS_8BIT_WEIGHT = 8

# Bytes saved for backward per token per decoder block at 16-bit compute, for a Llama block
# with LoRA (dropout on) on every linear layer and sdpa attention (no seq x seq scores):
# fp32 norm inputs, bf16 casts of each base and LoRA input, dropout masks, q/k/v/out for
# attention, gate/up/SiLU/product for the MLP. Counted term by term, then checked on an
# H200: a 4-bit 1.1B Llama (h=2048, i=5632, 16 blocks), batch 4 x 1024, measured within 5%.
ACTIVATION_BYTES_PER_HIDDEN = 44
ACTIVATION_BYTES_PER_KV = 4
ACTIVATION_BYTES_PER_INTERMEDIATE = 11
# The same at fp32 compute, in bytes (nothing is cast, so there are no 16-bit copies): each
# RMSNorm keeps its input, normalized and output (12h), each LoRA dropout its output and
# mask (5 per input element), attention q and its output twice (the sdpa result and the
# contiguous copy o_proj reads), k and v (4 each per kv element), and gate, SiLU(gate), up,
# their product (4 each per intermediate element). Checked on the CPU benchmark model
# (bench/estimator_accuracy.py): within 4% without gradient checkpointing.
ACTIVATION_BYTES_PER_HIDDEN_FP32 = 66
ACTIVATION_BYTES_PER_KV_FP32 = 8
ACTIVATION_BYTES_PER_INTERMEDIATE_FP32 = 21
# Per logit: the 16-bit head output, its fp32 copy, log-softmax and its gradient (measured).
LOGIT_BYTES = 14
# LLM.int8 training measured 0.6 MB more per token than 4-bit at the same shape, with or
# without checkpointing (so not per block): counted here as 19 more bytes per logit.
LOGIT_BYTES_8BIT = 33

# What a user can change to need less; said when a job is refused or runs out of memory.
MEMORY_ADVICE = (
    "Lower batch_size or max_seq_length, enable gradient_checkpointing, or use 4-bit quantization"
)

LLAMA_LINEAR_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True, slots=True)
class ModelShape:
    """The few numbers of a decoder-only transformer that decide its memory."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    tie_word_embeddings: bool = False

    @classmethod
    def from_config_dict(cls, config: Mapping[str, Any]) -> ModelShape:
        """Read a Hugging Face config.json dict (nested text_config for multimodal ones)."""
        if "hidden_size" not in config and isinstance(config.get("text_config"), Mapping):
            config = config["text_config"]
        heads = int(config["num_attention_heads"])
        return cls(
            vocab_size=int(config["vocab_size"]),
            hidden_size=int(config["hidden_size"]),
            intermediate_size=int(config["intermediate_size"]),
            num_hidden_layers=int(config["num_hidden_layers"]),
            num_attention_heads=heads,
            num_key_value_heads=int(config.get("num_key_value_heads") or heads),
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
        )

    @property
    def kv_width(self) -> int:
        """Output width of k_proj and v_proj (grouped-query attention shrinks it)."""
        return self.hidden_size // self.num_attention_heads * self.num_key_value_heads

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(d_in, d_out) of each linear layer of one decoder block, by its Llama name."""
        h, i, kv = self.hidden_size, self.intermediate_size, self.kv_width
        return {
            "q_proj": (h, h),
            "k_proj": (h, kv),
            "v_proj": (h, kv),
            "o_proj": (h, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }

    @property
    def linear_params(self) -> int:
        """Weights in the decoder blocks' linear layers: the part that gets quantized."""
        per_layer = sum(d_in * d_out for d_in, d_out in self.linear_shapes().values())
        return per_layer * self.num_hidden_layers

    @property
    def embedding_params(self) -> int:
        """Input embeddings plus the output head (once when tied)."""
        copies = 1 if self.tie_word_embeddings else 2
        return copies * self.vocab_size * self.hidden_size

    @property
    def norm_params(self) -> int:
        """RMSNorm weights: two per block and a final one."""
        return (2 * self.num_hidden_layers + 1) * self.hidden_size


# The built-in loraforge/tiny-random-llama; worker/training/tiny.py builds its config from this.
TINY_RANDOM_LLAMA_SHAPE = ModelShape(
    vocab_size=512,
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    tie_word_embeddings=False,
)


@dataclass(frozen=True, slots=True)
class MemoryEstimate:
    """Bytes per part; `total` is what the job needs on one device."""

    linear_weights: int  # the blocks' linear layers: quantized unless bits is None
    embeddings: int
    lora_params: int
    gradients: int
    optimizer_state: int
    activations: int
    cuda_context: int
    bits_per_quantized_weight: float

    @property
    def total(self) -> int:
        return (
            self.linear_weights
            + self.embeddings
            + self.lora_params
            + self.gradients
            + self.optimizer_state
            + self.activations
            + self.cuda_context
        )


def bits_per_weight(spec: ResolvedSpec, shape: ModelShape) -> float:
    """Storage bits per weight of the decoder's linear layers under the spec's quantization."""
    quantization = spec.quantization
    if quantization.bits == 4:
        return BITS_4BIT_DOUBLE_QUANT if quantization.double_quant else BITS_4BIT
    if quantization.bits == 8:
        return BITS_8BIT_WEIGHT + 32 / shape.hidden_size
    return 8.0 * compute_bytes(spec)


def compute_bytes(spec: ResolvedSpec) -> int:
    """Bytes per element of compute ("auto" is bf16 on a GPU)."""
    return 4 if spec.quantization.compute_dtype == "float32" else 2


def unquantized_bytes(spec: ResolvedSpec) -> int:
    """Bytes per embedding/head/norm weight and per residual-stream element.

    prepare_model_for_kbit_training upcasts every unquantized weight of a 4- or 8-bit model
    to fp32 for stability, and the residual stream then stays fp32 too.
    """
    return 4 if spec.quantization.bits is not None else compute_bytes(spec)


def lora_param_count(spec: ResolvedSpec, shape: ModelShape) -> int:
    """Trainable LoRA parameters: r x (d_in + d_out) per targeted linear layer."""
    targets = spec.lora.target_modules
    names = LLAMA_LINEAR_NAMES if targets == "all-linear" else tuple(targets)
    shapes = shape.linear_shapes()
    per_layer = sum(spec.lora.r * sum(shapes[name]) for name in names if name in shapes)
    return per_layer * shape.num_hidden_layers


def optimizer_bytes_per_param(spec: ResolvedSpec) -> int:
    """Adam keeps two moments: 1 byte each in 8-bit optimizers, 4 bytes each otherwise."""
    return 2 if spec.training.optimizer in ("paged_adamw_8bit", "adamw_8bit") else 8


def sequences_per_step(spec: ResolvedSpec) -> int:
    """Sequences one micro-batch runs forward and backward: a DPO pair is two, the preferred
    and the other answer, each after the input. DPO's reference pass (the base without LoRA,
    under no_grad) keeps nothing for backward and is done before the policy's pass, so it
    adds no peak of its own."""
    pairs_or_examples = spec.hyperparameters.batch_size
    return 2 * pairs_or_examples if spec.method == "dpo" else pairs_or_examples


def activation_bytes(spec: ResolvedSpec, shape: ModelShape) -> int:
    """Activations kept for backward for one micro-batch, plus the logits."""
    tokens = sequences_per_step(spec) * spec.training.max_seq_length
    if compute_bytes(spec) == 4:
        per_token_block = (
            ACTIVATION_BYTES_PER_HIDDEN_FP32 * shape.hidden_size
            + ACTIVATION_BYTES_PER_KV_FP32 * shape.kv_width
            + ACTIVATION_BYTES_PER_INTERMEDIATE_FP32 * shape.intermediate_size
        )
    else:
        per_token_block = (
            ACTIVATION_BYTES_PER_HIDDEN * shape.hidden_size
            + ACTIVATION_BYTES_PER_KV * shape.kv_width
            + ACTIVATION_BYTES_PER_INTERMEDIATE * shape.intermediate_size
        )
    one_block = tokens * per_token_block
    if spec.training.gradient_checkpointing:
        # Only each block's input (the residual stream) is kept; one block is recomputed.
        block_inputs = tokens * shape.hidden_size * unquantized_bytes(spec)
        kept = block_inputs * shape.num_hidden_layers + one_block
    else:
        kept = one_block * shape.num_hidden_layers
    logit_bytes = LOGIT_BYTES_8BIT if spec.quantization.bits == 8 else LOGIT_BYTES
    return kept + tokens * shape.vocab_size * logit_bytes


def estimate_memory(spec: ResolvedSpec, shape: ModelShape) -> MemoryEstimate:
    """Estimate the device memory a job needs, broken down by part."""
    bits = bits_per_weight(spec, shape)
    unquantized = shape.embedding_params + shape.norm_params
    lora = lora_param_count(spec, shape)
    return MemoryEstimate(
        linear_weights=round(shape.linear_params * bits / 8),
        # Embeddings, head and norms are not quantized (and are fp32 under k-bit training).
        embeddings=unquantized * unquantized_bytes(spec),
        lora_params=lora * 4,  # LoRA weights are kept in fp32
        gradients=lora * 4,
        optimizer_state=lora * optimizer_bytes_per_param(spec),
        activations=activation_bytes(spec, shape),
        cuda_context=CUDA_CONTEXT_BYTES,
        bits_per_quantized_weight=bits,
    )
