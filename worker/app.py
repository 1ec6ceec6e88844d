"""The worker's Celery app, built once from the settings, and the runtime its tasks share."""
from __future__ import annotations

import threading
from typing import Any

from celery.signals import worker_process_init

from shared.config import get_settings
from shared.queue import REQUEUE_WEBHOOKS, SWEEP_DUE, WEBHOOK_QUEUE, build_celery
from shared.runtime import Runtime, build_runtime
from shared.webhooks import REQUEUE_SECONDS

BEAT_LOCK_SECONDS = 30

settings = get_settings()
celery = build_celery(settings, name="worker")
celery.conf.update(
    imports=("worker.exchange", "worker.refresh", "worker.sweep", "worker.webhooks"),
    # Tasks spend their time waiting on providers and the database: threads
    # give many concurrent calls per process at little memory.
    worker_pool="threads",
    worker_concurrency=settings.worker_concurrency,
    beat_schedule={
        "sweep-due": {
            "task": SWEEP_DUE,
            "schedule": float(settings.refresh_sweep_seconds),
            # A sweep nobody ran in time is dropped: the next one covers it.
            "options": {"expires": float(settings.refresh_sweep_seconds)},
        },
        # Webhook retries whose time has come, and deliveries a crash kept from the queue.
        "requeue-webhooks": {
            "task": REQUEUE_WEBHOOKS,
            "schedule": float(REQUEUE_SECONDS),
            "options": {"expires": float(REQUEUE_SECONDS), "queue": WEBHOOK_QUEUE},
        },
    },
    # RedBeat keeps the schedule in Redis behind a lock, so of any number of beat
    # processes exactly one sends; another takes over when the lock expires.
    beat_scheduler="redbeat.RedBeatScheduler",
    redbeat_redis_url=settings.redis_url,
    redbeat_key_prefix="redbeat:",
    redbeat_lock_timeout=BEAT_LOCK_SECONDS,
    beat_max_loop_interval=min(settings.refresh_sweep_seconds, 5),
)

_lock = threading.Lock()
_runtime: Runtime | None = None


def runtime() -> Runtime:
    """The process's runtime, built on first use (after any fork)."""
    global _runtime
    with _lock:
        if _runtime is None:
            _runtime = build_runtime(settings, celery)
        return _runtime


@worker_process_init.connect
def _after_fork(**_: Any) -> None:
    """A forked child must never share the parent's database connections."""
    if _runtime is not None:
        _runtime.db.dispose()


