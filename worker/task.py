"""`KeeperTask`, the base class of every worker task: what each task would otherwise
repeat (the redelivery defaults, the process runtime, timing and logs) lives here.

A task module writes `@celery.task(name=SOME_NAME)` with `worker.app.celery` and gets
all of it; a task that needs the runtime binds (`bind=True`) and reads `self.rt`."""
from __future__ import annotations

import logging
import random
import time
from typing import Any

from celery import Task
from celery.exceptions import Retry

from shared.runtime import Runtime

log = logging.getLogger("worker.tasks")


class KeeperTask(Task):
    """Idempotent by default: kept until done and redelivered if its worker dies."""

    # The message is acknowledged when the task ends, not when it starts, and put back
    # if the worker process is lost, so a crash never drops work. Every task here is
    # safe to run twice (locks, re-reads, fenced writes); one that is not sets False.
    acks_late = True
    reject_on_worker_lost = True
    # Nobody reads results: the database and the update channel carry outcomes.
    ignore_result = True
    # Every task here gives up after a bounded number of retries (Celery's default is 3;
    # a task sets its own with `max_retries=`), never None for "retry forever".
    max_retries: int = 3

    @property
    def rt(self) -> Runtime:
        """The process's runtime (settings, database, Redis, cipher, Celery)."""
        from worker.app import runtime  # the app module imports this class by name

        return runtime()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the task, then log its outcome and how long it took; never its arguments'
        secrets (tasks carry ids only)."""
        started = time.perf_counter()
        try:
            result = self.run(*args, **kwargs)
        except Retry:
            log.info("%s asks to be retried after %.0f ms", self.name, (time.perf_counter() - started) * 1000)
            raise
        except Exception as error:
            log.warning("%s failed after %.0f ms: %s", self.name, (time.perf_counter() - started) * 1000,
                        type(error).__name__)
            raise
        log.info("%s %s in %.0f ms", self.name, result, (time.perf_counter() - started) * 1000)
        return result

    def defer(self, countdown: float) -> None:
        """Queue this very message again, to run in `countdown` seconds on the same queue,
        without spending one of its retries: its turn has not come yet."""
        jittered = countdown * random.uniform(0.8, 1.2)
        self.signature_from_request(countdown=jittered).apply_async()
