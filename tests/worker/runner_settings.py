"""The `settings` that tests running a JobRunner in-process use in place of the suite's: SQLite
in the data dir, whose models/ is the session's generated tiny model. A module imports the
fixture to take it (`from tests.worker.runner_settings import runner_settings`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.config import Settings


@pytest.fixture(name="settings")
def runner_settings(tmp_path: Path, models_dir: Path) -> Settings:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "models").symlink_to(models_dir, target_is_directory=True)
    return Settings(
        data_dir=data_dir,
        broker_url="memory://",
        min_training_examples=10,
        _env_file=None,  # type: ignore[call-arg]
    )
