"""`loraforge jobs watch`: a job's event stream as a progress bar (step/total, loss, lr,
tokens/s, ETA), with its messages printed above it."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn

from app.client.http import LoraforgeClient

TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})


def format_eta(seconds: float | None) -> str:
    if seconds is None:
        return "-:--"
    total = max(0, round(seconds))
    hours, rest = divmod(total, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.fields[status]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("lr {task.fields[lr]}"),
        TextColumn("{task.fields[speed]} tok/s"),
        TextColumn("ETA {task.fields[eta]}"),
        console=console,
    )


class JobWatcher:
    """Feeds one job's events into a rich Progress."""

    def __init__(self, client: LoraforgeClient, job_id: str, console: Console) -> None:
        self.client = client
        self.job_id = job_id
        self.console = console
        self.progress = _progress(console)
        self.task: TaskID | None = None

    def job(self) -> dict[str, Any]:
        job: dict[str, Any] = self.client.get(f"/fine_tuning/jobs/{self.job_id}")
        return job

    def on_metrics(self, data: dict[str, Any]) -> None:
        assert self.task is not None
        loss = f"{data['train_loss']:.4f}"
        if data.get("valid_loss") is not None:
            loss += f" (valid {data['valid_loss']:.4f})"
        self.progress.update(
            self.task,
            completed=data["step"],
            total=data["total_steps"],
            loss=loss,
            lr=f"{data['lr']:.2e}",
            speed=f"{data['tokens_per_second']:.0f}",
            eta=format_eta(data.get("eta_seconds")),
        )

    def on_message(self, event: dict[str, Any]) -> None:
        assert self.task is not None
        when = datetime.fromtimestamp(event["created_at"]).strftime("%H:%M:%S")
        self.progress.console.print(
            f"{when} {event['message']}", markup=False, highlight=False, soft_wrap=True
        )
        # A message often comes with a change of status (started, paused, resumed...).
        self.progress.update(self.task, status=self.job()["status"])

    def run(self) -> dict[str, Any]:
        """Follow the job until it has ended; returns the job as it ended."""
        start = self.job()
        with self.progress:
            self.task = self.progress.add_task(
                self.job_id,
                total=None,
                status=start["status"],
                loss="-",
                lr="-",
                speed="-",
                eta="-:--",
            )
            for frame in self.client.events(self.job_id):
                if frame.event == "done":
                    break
                event = json.loads(frame.data)
                if frame.event == "metrics" and event.get("data"):
                    self.on_metrics(event["data"])
                else:
                    self.on_message(event)
            finished = self.job()
            self.progress.update(self.task, status=finished["status"], eta="0:00")
        return finished
