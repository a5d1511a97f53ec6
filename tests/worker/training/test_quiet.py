"""bitsandbytes' warning about the absent `kernels` package stays out of the worker's output,
and no other message of bitsandbytes is lost."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from worker.training.quiet import BNB_CPU_LOGGER, NoKernelsHubWarning

KERNELS_WARNING = (
    "Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please make sure you "
    "already `pip install kernels` and the kernels >= 0.11.1"
)


def record(message: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord(BNB_CPU_LOGGER, logging.WARNING, __file__, 1, message, args, None)


def test_the_filter_drops_only_the_missing_kernels_warning() -> None:
    kernels_filter = NoKernelsHubWarning()
    missing = ModuleNotFoundError("No module named 'kernels'")
    assert not kernels_filter.filter(record(KERNELS_WARNING, missing))
    # The same failure for another reason (a broken install) is still reported.
    assert kernels_filter.filter(record(KERNELS_WARNING, RuntimeError("kernel 0.9 too old")))
    assert kernels_filter.filter(record("Failed to load CPU-only bitsandbytes library"))


@pytest.mark.slow
@pytest.mark.parametrize("module", ["worker.training.models", "worker.inference.engine"])
def test_loading_an_engine_prints_no_kernels_warning(module: str) -> None:
    """On a CPU with AVX512-BF16 (where bitsandbytes tries the `kernels` package); elsewhere
    the warning never comes. The inference engine imports peft (and with it bitsandbytes)
    before anything of the training engine."""
    loaded = subprocess.run(
        [sys.executable, "-c", f"import {module}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert loaded.returncode == 0, loaded.stderr
    assert "kernels" not in loaded.stderr
