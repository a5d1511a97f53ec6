"""The engine's frozen input: a resolved job spec, its base model, and where things live."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from app.catalog import CatalogEntry
from app.schemas.spec import (
    DEFAULT_DPO_BETA,
    LoraSpec,
    QuantizationSpec,
    ResolvedSpec,
    ResolvedTrainingSpec,
)

if TYPE_CHECKING:
    import torch

DTYPE_NAMES = ("bfloat16", "float16", "float32")


@dataclass(frozen=True)
class TrainingConfig:
    """Everything the engine needs besides the data, with "auto" and the device resolved."""

    spec: ResolvedSpec
    model: CatalogEntry
    device: str  # "cuda" or "cpu"
    compute_dtype: str  # one of DTYPE_NAMES, never "auto"

    @classmethod
    def from_spec(
        cls, spec: ResolvedSpec, model: CatalogEntry, *, device: str | None = None
    ) -> TrainingConfig:
        """Resolve the device (CUDA when present) and the compute dtype for it."""
        device = device or detect_device()
        requested = spec.quantization.compute_dtype
        dtype = default_compute_dtype(device) if requested == "auto" else requested
        return cls(spec=spec, model=model, device=device, compute_dtype=dtype)

    @property
    def seed(self) -> int:
        return self.spec.seed

    @property
    def lora(self) -> LoraSpec:
        return self.spec.lora

    @property
    def quantization(self) -> QuantizationSpec:
        return self.spec.quantization

    @property
    def training(self) -> ResolvedTrainingSpec:
        return self.spec.training

    @property
    def batch_size(self) -> int:
        return self.spec.hyperparameters.batch_size

    @property
    def beta(self) -> float:
        """DPO's beta (its default for a spec that predates it)."""
        return self.spec.hyperparameters.beta or DEFAULT_DPO_BETA

    @property
    def n_epochs(self) -> int:
        return self.spec.hyperparameters.n_epochs

    @property
    def torch_dtype(self) -> torch.dtype:
        import torch

        return getattr(torch, self.compute_dtype)  # type: ignore[no-any-return]


@dataclass(frozen=True)
class TrainingPaths:
    """Inputs and the job directory (DESIGN §3: jobs/{job_id}/...)."""

    train_file: Path
    output_dir: Path
    # Where built-in models are generated and cached (data_dir/models).
    models_dir: Path
    validation_file: Path | None = None
    # A fine-tuned parent's adapter_model.safetensors: the LoRA weights training starts from.
    parent_adapter: Path | None = None

    @property
    def checkpoints_dir(self) -> Path:
        return self.output_dir / "checkpoints"

    @property
    def adapter_dir(self) -> Path:
        return self.output_dir / "adapter"

    @property
    def results_csv(self) -> Path:
        return self.output_dir / "results.csv"


def detect_device() -> str:
    """CUDA when a GPU is visible, else the CPU (bitsandbytes runs NF4 there too)."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def default_compute_dtype(device: str) -> str:
    """bf16 on a GPU that has it (QLoRA's choice), fp16 on older GPUs, fp32 on the CPU.

    fp32 on the CPU keeps training bitwise reproducible (exact resume) and avoids slow
    bf16 emulation on CPUs without native support.
    """
    import torch

    if device.startswith("cuda"):
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return "float32"
