"""The worker's Celery app, built once from the settings, and the runtime its tasks share."""
from __future__ import annotations

import threading
from typing import Any

from celery.signals import worker_process_init

from shared.config import get_settings
from shared.queue import build_celery
from shared.runtime import Runtime, build_runtime

settings = get_settings()
celery = build_celery(settings, name="worker")
celery.conf.update(
    imports=("worker.exchange",),
    # Tasks spend their time waiting on providers and the database: threads
    # give many concurrent calls per process at little memory.
    worker_pool="threads",
    worker_concurrency=32,
)

_lock = threading.Lock()
_runtime: Runtime | None = None


def runtime() -> Runtime:
    """The process's runtime, built on first use (after any fork)."""
    global _runtime
    with _lock:
        if _runtime is None:
            rt = build_runtime(settings)
            rt.celery = celery
            _runtime = rt
        return _runtime


@worker_process_init.connect
def _after_fork(**_: Any) -> None:
    """A forked child must never share the parent's database connections."""
    if _runtime is not None:
        _runtime.db.dispose()


