"""What a worker process holds for its lifetime: settings, database, storage, identity."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings, get_settings
from app.db.session import make_engine, make_session_factory
from app.storage import Storage, build_storage
from worker.device_memory import device_memory_bytes
from worker.lifecycle import worker_identity

if TYPE_CHECKING:
    from app.queue import Enqueuer


@dataclass
class WorkerContext:
    settings: Settings
    session_factory: sessionmaker[Session]
    storage: Storage
    identity: str
    # Set when the worker is told to stop (SIGTERM): the running job hands itself back.
    stopping: threading.Event = field(default_factory=threading.Event)

    @classmethod
    def from_settings(cls, settings: Settings) -> WorkerContext:
        engine = make_engine(settings.resolved_database_url())
        return cls(
            settings,
            make_session_factory(engine),
            build_storage(settings),
            worker_identity(),
        )

    @cached_property
    def enqueuer(self) -> Enqueuer:
        from app.queue import CeleryEnqueuer

        return CeleryEnqueuer(self.settings)

    @cached_property
    def device_memory_bytes(self) -> int | None:
        """What a job may use here: the setting, the GPU's memory or, on the CPU, the RAM
        available at the first job (measured once: memory a finished job freed may stay with
        this process, and would not look available afterwards)."""
        return device_memory_bytes(self.settings)


_context: WorkerContext | None = None


def current_context() -> WorkerContext:
    """The process's context, built on first use from the environment's settings."""
    global _context
    if _context is None:
        _context = WorkerContext.from_settings(get_settings())
    return _context
