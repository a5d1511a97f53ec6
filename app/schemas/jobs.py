"""Fine-tuning job requests and responses in OpenAI's shapes, plus loraforge's extensions."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, field_validator

from app.schemas.integrations import Integration
from app.schemas.spec import (
    WHOLE,
    Hyperparameters,
    LoraSpec,
    Method,
    MethodType,
    QuantizationSpec,
    ResolvedSpec,
    ResolvedTrainingSpec,
    StrictModel,
    TrainingSpec,
)

JobStatus = Literal[
    "validating_files", "queued", "running", "paused", "succeeded", "failed", "cancelled"
]
TERMINAL_STATUSES: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})

MetadataKey = Annotated[str, Field(min_length=1, max_length=64)]
MetadataValue = Annotated[str, Field(max_length=512)]
MAX_METADATA_PAIRS = 16


@dataclass(frozen=True)
class MetadataFilter:
    """`GET /v1/fine_tuning/jobs?metadata[k]=v...` (each pair must match), or `metadata=null`
    (jobs without metadata)."""

    pairs: dict[str, str] = field(default_factory=dict)
    without_metadata: bool = False


class JobCreate(StrictModel):
    model: Annotated[
        str,
        Field(
            min_length=1,
            max_length=255,
            description="A base model of the catalog, or a fine_tuned_model or checkpoint name "
            "of the organization's jobs to train further from its adapter",
        ),
    ]
    training_file: Annotated[str, Field(min_length=1, max_length=64)]
    validation_file: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    # OpenAI's bound and no pattern: the model name carries it normalized (fine_tuned_model_name).
    suffix: Annotated[str, Field(max_length=64)] | None = None
    seed: Annotated[int, Field(ge=0, le=2**31 - 1), WHOLE] | None = None
    metadata: Annotated[dict[MetadataKey, MetadataValue], Field(max_length=16)] | None = None
    method: Method | None = None
    # Deprecated by OpenAI in favour of method.supervised.hyperparameters; still accepted.
    hyperparameters: Hyperparameters | None = None
    integrations: Annotated[list[Integration], Field(max_length=4)] | None = None
    lora: LoraSpec = Field(default_factory=LoraSpec)
    quantization: QuantizationSpec = Field(default_factory=QuantizationSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)

    @field_validator("model", "training_file", "validation_file")
    @classmethod
    def _no_control_characters(cls, value: str | None) -> str | None:
        # Names and ids never hold them, and PostgreSQL cannot compare text with NUL.
        if value is not None and any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise ValueError("must not contain control characters")
        return value

    @field_validator("suffix")
    @classmethod
    def _drop_control_characters(cls, value: str | None) -> str | None:
        # Free text, kept as sent but for control characters (PostgreSQL cannot store NUL).
        if value is None:
            return None
        return "".join(c for c in value if ord(c) >= 32 and ord(c) != 127)

    def requested_hyperparameters(self) -> Hyperparameters:
        """The hyperparameters from `method` or, failing that, the deprecated top-level field."""
        method = self.method or Method()
        if method.type == "dpo" and self.hyperparameters is not None:
            raise ValueError(
                "the top-level hyperparameters (deprecated) are for supervised jobs; give a DPO "
                "job's in method.dpo.hyperparameters"
            )
        if self.method is not None and self.hyperparameters is not None:
            explicit = method.requested_hyperparameters().model_fields_set
            if explicit:
                raise ValueError("give hyperparameters in method or at the top level, not both")
        if self.hyperparameters is not None:
            return self.hyperparameters
        return method.requested_hyperparameters()


class JobError(BaseModel):
    code: str
    message: str
    param: str | None = None


def _absent(value: object) -> bool:
    return value is None


class SupervisedHyperparametersPublic(BaseModel):
    n_epochs: int
    batch_size: int
    learning_rate_multiplier: float


class DpoHyperparametersPublic(SupervisedHyperparametersPublic):
    beta: float


def hyperparameters_public(
    spec: ResolvedSpec,
) -> DpoHyperparametersPublic | SupervisedHyperparametersPublic:
    """The resolved hyperparameters of the job's method: beta only for DPO."""
    if spec.method == "dpo":
        return DpoHyperparametersPublic.model_validate(spec.hyperparameters.model_dump())
    return SupervisedHyperparametersPublic.model_validate(
        spec.hyperparameters.model_dump(exclude={"beta"})
    )


class SupervisedPublic(BaseModel):
    hyperparameters: SupervisedHyperparametersPublic


class DpoPublic(BaseModel):
    hyperparameters: DpoHyperparametersPublic


class MethodPublic(BaseModel):
    """OpenAI's `method`: its type, and the resolved hyperparameters under that type's key
    (the other key is left out, as OpenAI leaves it out)."""

    type: MethodType = "supervised"
    supervised: Annotated[SupervisedPublic | None, Field(exclude_if=_absent)] = None
    dpo: Annotated[DpoPublic | None, Field(exclude_if=_absent)] = None


class JobPublic(BaseModel):
    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    error: JobError | None
    fine_tuned_model: str | None
    finished_at: int | None
    # Deprecated by OpenAI for `method`; beta shows only on DPO jobs.
    hyperparameters: DpoHyperparametersPublic | SupervisedHyperparametersPublic
    method: MethodPublic
    model: str
    organization_id: str
    result_files: list[str]
    seed: int
    status: JobStatus
    trained_tokens: int | None
    training_file: str
    validation_file: str | None
    estimated_finish: int | None
    integrations: list[Integration] = Field(default_factory=list)
    metadata: dict[str, str] | None
    suffix: str | None
    # + loraforge
    lora: LoraSpec
    quantization: QuantizationSpec
    training: ResolvedTrainingSpec
    attempt: int
    cancel_requested: bool
    pause_requested: bool


class EventPublic(BaseModel):
    id: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: Literal["info", "warn", "error"]
    message: str
    type: Literal["message", "metrics"]
    data: dict[str, Any] | None = None


class CheckpointMetrics(BaseModel):
    step: int | None = None
    train_loss: float | None = None
    train_mean_token_accuracy: float | None = None
    valid_loss: float | None = None
    valid_mean_token_accuracy: float | None = None
    full_valid_loss: float | None = None
    full_valid_mean_token_accuracy: float | None = None
    # DPO jobs: the share of validation pairs whose preferred output the model ranks higher,
    # and the mean of beta * (its log-ratio to the reference minus the other's).
    full_valid_preference_accuracy: float | None = None
    full_valid_reward_margin: float | None = None


class CheckpointPublic(BaseModel):
    id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    metrics: CheckpointMetrics
    step_number: int
