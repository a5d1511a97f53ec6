"""The fine-tuning job spec: what a client may ask for, and its resolved form.

The API resolves every "auto" when the job is created and stores the result; the training
engine (worker/training) and `loraforge train` read the same resolved form, so the numbers a
user sees on the job are the numbers the trainer used.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

Auto = Literal["auto"]

# QLoRA paper defaults (Dettmers et al. 2023, appendix B): lr 2e-4, max grad norm 0.3.
DEFAULT_LEARNING_RATE = 2e-4
# DPO moves a policy away from its reference by small steps: a tenth of the supervised rate
# (TRL's and LLaMA-Factory's LoRA DPO examples sit at 5e-6..5e-5), and DPO's usual beta.
DEFAULT_DPO_LEARNING_RATE = 2e-5
DEFAULT_DPO_BETA = 0.1
# OpenAI's auto-epoch rule: aim for 100..25,000 examples seen, 1..25 epochs.
MIN_TARGET_EXAMPLES = 100
MAX_TARGET_EXAMPLES = 25_000
MAX_DEFAULT_EPOCHS = 25

Optimizer = Literal["paged_adamw_8bit", "paged_adamw_32bit", "adamw_8bit", "adamw_torch"]
Scheduler = Literal["cosine", "linear", "constant", "constant_with_warmup"]
ComputeDtype = Literal["auto", "bfloat16", "float16", "float32"]


def _whole_number(value: object) -> object:
    """JSON Schema's integer: 3.0 is one too (some clients write every number as a float)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# On a request's integers, after their Field (so that the schema keeps its bounds): a whole
# number, never a boolean or a string of digits.
WHOLE = BeforeValidator(_whole_number)


class StrictModel(BaseModel):
    """Unknown fields are refused: a typo must not silently fall back to a default. Types are
    strict, as the schema states them: `true` is no number and `"5"` no integer (a whole
    number still is a float)."""

    model_config = ConfigDict(extra="forbid", strict=True)


class Hyperparameters(StrictModel):
    """OpenAI's supervised hyperparameters; each may be "auto"."""

    n_epochs: Annotated[int, Field(ge=1, le=50), WHOLE] | Auto = "auto"
    batch_size: Annotated[int, Field(ge=1, le=256), WHOLE] | Auto = "auto"
    # OpenAI's bound: any number above 0.
    learning_rate_multiplier: Annotated[float, Field(gt=0, allow_inf_nan=False)] | Auto = "auto"


class DpoHyperparameters(Hyperparameters):
    """OpenAI's DPO hyperparameters: the supervised ones and beta, each may be "auto"."""

    # How far the policy may move from its reference: OpenAI's bound, (0, 2].
    beta: Annotated[float, Field(gt=0, le=2, allow_inf_nan=False)] | Auto = "auto"


class ResolvedHyperparameters(StrictModel):
    n_epochs: int
    batch_size: int
    learning_rate_multiplier: float
    beta: float | None = None  # DPO jobs only


class LoraSpec(StrictModel):
    r: Annotated[int, Field(ge=1, le=256), WHOLE] = 16
    alpha: Annotated[float, Field(gt=0, le=1024)] = 32
    dropout: Annotated[float, Field(ge=0, le=0.5)] = 0.05
    # "all-linear" = every linear layer of the transformer blocks (QLoRA's setting).
    target_modules: (
        Literal["all-linear"] | Annotated[list[str], Field(min_length=1, max_length=64)]
    ) = "all-linear"


class QuantizationSpec(StrictModel):
    bits: Literal[4, 8] | None = 4
    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = True
    # "auto": bfloat16 on a GPU that has it, float32 on the CPU.
    compute_dtype: ComputeDtype = "auto"


class TrainingSpec(StrictModel):
    optimizer: Optimizer = "paged_adamw_8bit"
    learning_rate: Annotated[float, Field(gt=0, le=1e-2)] | Auto = "auto"
    lr_scheduler: Scheduler = "cosine"
    warmup_ratio: Annotated[float, Field(ge=0, le=0.5)] = 0.03
    weight_decay: Annotated[float, Field(ge=0, le=1)] = 0.0
    max_grad_norm: Annotated[float, Field(gt=0, le=100)] = 0.3
    max_seq_length: Annotated[int, Field(ge=16, le=131_072), WHOLE] = 1024
    packing: bool = False
    gradient_checkpointing: bool = True
    gradient_accumulation_steps: Annotated[int, Field(ge=1, le=256), WHOLE] = 1
    train_on: Literal["assistant", "all"] = "assistant"
    max_steps: Annotated[int, Field(ge=1, le=1_000_000), WHOLE] | None = None
    eval_every_steps: Annotated[int, Field(ge=1, le=1_000_000), WHOLE] | None = None
    checkpoint_every_steps: Annotated[int, Field(ge=1, le=1_000_000), WHOLE] | None = None


class ResolvedTrainingSpec(TrainingSpec):
    learning_rate: float  # type: ignore[assignment]


class SupervisedMethod(StrictModel):
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)


class DpoMethod(StrictModel):
    hyperparameters: DpoHyperparameters = Field(default_factory=DpoHyperparameters)


MethodType = Literal["supervised", "dpo"]


class Method(StrictModel):
    """OpenAI's `method`: supervised fine-tuning, or DPO on preference pairs."""

    type: MethodType = "supervised"
    supervised: SupervisedMethod | None = None
    dpo: DpoMethod | None = None

    @model_validator(mode="after")
    def _only_its_type(self) -> Method:
        other = "supervised" if self.type == "dpo" else "dpo"
        if getattr(self, other) is not None:
            raise ValueError(
                f"method.type is {self.type!r}, so its hyperparameters go in method.{self.type}, "
                f"not method.{other}"
            )
        return self

    def requested_hyperparameters(self) -> Hyperparameters:
        """The hyperparameters of the method's type (all "auto" when not given)."""
        if self.type == "dpo":
            return (self.dpo or DpoMethod()).hyperparameters
        return (self.supervised or SupervisedMethod()).hyperparameters


class ParentModel(StrictModel):
    """The fine-tuned model or checkpoint a job continues from (its adapter, on its base)."""

    model: str  # the name the request gave: a fine_tuned_model or a checkpoint's name
    job_id: str
    step: int | None = None  # the checkpoint's step; None for the job's final adapter


class ResolvedSpec(StrictModel):
    """Everything the trainer needs besides the data: stored on the job, read by the engine."""

    model: str  # the catalog base, also when the job continues a fine-tuned model
    seed: int
    method: MethodType = "supervised"
    hyperparameters: ResolvedHyperparameters
    lora: LoraSpec
    quantization: QuantizationSpec
    training: ResolvedTrainingSpec
    parent: ParentModel | None = None


def _next_power_of_two(value: float) -> int:
    return 1 << max(0, math.ceil(math.log2(max(1.0, value))))


def resolve_n_epochs(n_examples: int) -> int:
    """OpenAI's rule: 3 epochs, more for tiny datasets, fewer for huge ones."""
    n = max(1, n_examples)
    if n * 3 < MIN_TARGET_EXAMPLES:
        return min(MAX_DEFAULT_EPOCHS, math.ceil(MIN_TARGET_EXAMPLES / n))
    if n * 3 > MAX_TARGET_EXAMPLES:
        return max(1, MAX_TARGET_EXAMPLES // n)
    return 3


def resolve_batch_size(n_examples: int) -> int:
    """About 0.2% of the dataset, a power of two between 4 and 32, never above the dataset."""
    size = min(32, max(4, _next_power_of_two(n_examples * 0.002)))
    return max(1, min(size, n_examples))


def resolve_spec(
    *,
    model: str,
    seed: int,
    n_train_examples: int,
    hyperparameters: Hyperparameters,
    lora: LoraSpec,
    quantization: QuantizationSpec,
    training: TrainingSpec,
    parent: ParentModel | None = None,
    method: MethodType = "supervised",
) -> ResolvedSpec:
    """Fill in every "auto" from the dataset size (for DPO, its pairs) and the defaults."""
    base_rate = DEFAULT_DPO_LEARNING_RATE if method == "dpo" else DEFAULT_LEARNING_RATE
    multiplier = hyperparameters.learning_rate_multiplier
    if training.learning_rate != "auto":
        learning_rate = training.learning_rate
        multiplier = learning_rate / base_rate
    else:
        multiplier = 1.0 if multiplier == "auto" else multiplier
        learning_rate = base_rate * multiplier
    beta = None
    if method == "dpo":
        requested = (
            hyperparameters.beta if isinstance(hyperparameters, DpoHyperparameters) else "auto"
        )
        beta = DEFAULT_DPO_BETA if requested == "auto" else float(requested)
    n_epochs = hyperparameters.n_epochs
    batch_size = hyperparameters.batch_size
    return ResolvedSpec(
        model=model,
        seed=seed,
        method=method,
        hyperparameters=ResolvedHyperparameters(
            n_epochs=resolve_n_epochs(n_train_examples) if n_epochs == "auto" else n_epochs,
            batch_size=resolve_batch_size(n_train_examples) if batch_size == "auto" else batch_size,
            learning_rate_multiplier=multiplier,
            beta=beta,
        ),
        lora=lora,
        quantization=quantization,
        training=ResolvedTrainingSpec(**{**training.model_dump(), "learning_rate": learning_rate}),
        parent=parent,
    )
