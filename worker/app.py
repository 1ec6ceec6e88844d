"""The worker's Celery app and the runtime its tasks share, both built on first use.

Importing this module (or any task module) reads no settings: the configuration is a
promise Celery keeps when it first needs it, so `celery -A worker worker` and
`celery -A worker beat` read the environment once, at start."""
from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from celery import Celery
from celery.signals import worker_process_init, worker_ready

from shared.config import get_settings
from shared.queue import PRUNE_HISTORY, REQUEUE_WEBHOOKS, REVOKE_LEFTOVERS, SWEEP_DUE, WEBHOOK_QUEUE, celery_config
from shared.runtime import Runtime, build_runtime
from shared.webhooks import REQUEUE_SECONDS

if TYPE_CHECKING:
    from worker.task import KeeperTask

BEAT_LOCK_SECONDS = 30
REVOKE_LEFTOVERS_SECONDS = 300.0
TASK_MODULES = ("worker.exchange", "worker.refresh", "worker.batch", "worker.sweep", "worker.webhooks",
                "worker.revoke", "worker.retention")


def worker_config() -> dict[str, Any]:
    """The worker's Celery configuration, from the process's settings."""
    settings = get_settings()
    return {
        **celery_config(settings),
        "imports": TASK_MODULES,
        # Tasks spend their time waiting on providers and the database: threads
        # give many concurrent calls per process at little memory.
        "worker_pool": "threads",
        "worker_concurrency": settings.worker_concurrency,
        "beat_schedule": {
            "sweep-due": {
                "task": SWEEP_DUE,
                "schedule": float(settings.refresh_sweep_seconds),
                # A sweep nobody ran in time is dropped: the next one covers it.
                "options": {"expires": float(settings.refresh_sweep_seconds)},
            },
            # Revocations whose task never ran (a crash after the DELETE's commit).
            "revoke-leftovers": {
                "task": REVOKE_LEFTOVERS,
                "schedule": REVOKE_LEFTOVERS_SECONDS,
                "options": {"expires": REVOKE_LEFTOVERS_SECONDS},
            },
            # Old history, delivered webhooks and ended connect sessions, in small batches.
            "prune-history": {
                "task": PRUNE_HISTORY,
                "schedule": float(settings.retention_sweep_seconds),
                "options": {"expires": float(settings.retention_sweep_seconds)},
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
        "beat_scheduler": "redbeat.RedBeatScheduler",
        "redbeat_redis_url": settings.redis_url,
        "redbeat_key_prefix": "redbeat:",
        "redbeat_lock_timeout": BEAT_LOCK_SECONDS,
        "beat_max_loop_interval": min(settings.refresh_sweep_seconds, 5),
    }


# Every task of this app is a KeeperTask (worker/task.py): `@celery.task(name=…)` is all
# a task module writes.
celery: Celery[KeeperTask] = Celery("worker", task_cls="worker.task:KeeperTask")
celery.add_defaults(worker_config)

_lock = threading.Lock()
_runtime: Runtime | None = None


def runtime() -> Runtime:
    """The process's runtime, built on first use (after any fork)."""
    global _runtime
    with _lock:
        if _runtime is None:
            _runtime = build_runtime(get_settings(), celery)
        return _runtime


@worker_ready.connect
def _build_runtime(**_: Any) -> None:
    """Build the runtime (and import what it needs) once the worker is up, so the first
    task does not pay for it."""
    runtime()


@worker_process_init.connect
def _after_fork(**_: Any) -> None:
    """A forked child must never share the parent's database connections."""
    if _runtime is not None:
        _runtime.db.dispose()
