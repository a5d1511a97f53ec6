"""Keep one harmless bitsandbytes warning out of every worker's log.

On a CPU with AVX512-BF16, importing bitsandbytes tries to fetch a faster 4-bit kernel with
the `kernels` package and, without it, logs "Failed to load CPU gemm_4bit_forward from
kernels-community: No module named 'kernels'" on every load, then uses its own CPU kernel.
We never install `kernels` (it downloads code from a hub at run time), so the message says
nothing; only that message, with that cause, is dropped.
"""

from __future__ import annotations

import logging

BNB_CPU_LOGGER = "bitsandbytes.backends.cpu.ops"


class NoKernelsHubWarning(logging.Filter):
    """Drops the warning about the absent `kernels` package, and nothing else."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (
            message.startswith("Failed to load CPU gemm_4bit_forward from kernels-community")
            and "No module named 'kernels'" in message
        )


def quiet_bitsandbytes() -> None:
    """Install the filter on bitsandbytes' CPU logger (once; the logger may not exist yet)."""
    logger = logging.getLogger(BNB_CPU_LOGGER)
    if not any(isinstance(f, NoKernelsHubWarning) for f in logger.filters):
        logger.addFilter(NoKernelsHubWarning())


def library_logs_to_root(progress_bars: bool) -> None:
    """transformers' records through the root logger's handler (it installs a stderr handler
    of its own and stops propagation), and its progress bars (and the hub's) only when asked:
    drawn with carriage returns, they are no lines of a JSON log."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_default_handler()
    hf_logging.enable_propagation()
    if progress_bars:
        hf_logging.enable_progress_bar()
    else:
        hf_logging.disable_progress_bar()
