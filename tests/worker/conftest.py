"""Fixtures for the training engine: the tiny model in a session cache, small datasets,
and a config builder with test-sized defaults (CPU, offline)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch

from tests.worker.factories import chat_rows, write_jsonl
from worker.training.config import TrainingPaths
from worker.training.tiny import ensure_tiny_model

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir whose models/ cache holds the tiny model, generated once per session."""
    directory = tmp_path_factory.mktemp("data")
    ensure_tiny_model(directory / "models")
    return directory


@pytest.fixture(scope="session")
def models_dir(data_dir: Path) -> Path:
    return data_dir / "models"


@pytest.fixture(scope="session")
def tokenizer(models_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(ensure_tiny_model(models_dir))


@pytest.fixture
def chat_file(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "train.jsonl", chat_rows(repeat=4))


@pytest.fixture
def validation_file(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "validation.jsonl", chat_rows(repeat=1))


@pytest.fixture
def make_paths(tmp_path: Path, models_dir: Path, chat_file: Path) -> Callable[..., TrainingPaths]:
    """TrainingPaths for a job directory named `name` under tmp_path."""

    def make(
        name: str = "job", train_file: Path | None = None, validation_file: Path | None = None
    ) -> TrainingPaths:
        return TrainingPaths(
            train_file=train_file or chat_file,
            validation_file=validation_file,
            output_dir=tmp_path / name,
            models_dir=models_dir,
        )

    return make
