"""A progress bar on stderr for `loraforge train`, driven by the engine's hooks."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType, TracebackType

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from worker.training.metrics import StepMetrics, StopReason, TrainingHooks


class ProgressHooks:
    """Shows step, loss and lr; Ctrl-C asks the engine to pause with a checkpoint."""

    def __init__(self) -> None:
        self.progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
        )
        self.task = self.progress.add_task("train", total=None, status="loading")
        self.pause_requested = False

    def __enter__(self) -> ProgressHooks:
        self.progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.progress.stop()

    def on_metrics(self, metrics: StepMetrics) -> None:
        status = f"loss {metrics.train_loss:.4f} lr {metrics.lr:.2e}"
        if metrics.valid_loss is not None:
            status += f" valid {metrics.valid_loss:.4f}"
        self.progress.update(
            self.task, completed=metrics.step, total=metrics.total_steps, status=status
        )

    def should_stop(self) -> StopReason | None:
        return "pause" if self.pause_requested else None

    def request_pause(self, signum: int, frame: FrameType | None) -> None:
        self.pause_requested = True
        self.progress.console.print("pausing after this step (a checkpoint is saved)")

    def hooks(self) -> TrainingHooks:
        return TrainingHooks(on_metrics=self.on_metrics, should_stop=self.should_stop)


@contextmanager
def pause_on_interrupt(progress: ProgressHooks) -> Iterator[None]:
    """Route Ctrl-C to a pause while training, when running in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, progress.request_pause)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
