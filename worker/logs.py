"""Logging of workers and beat: the service's format (shared/logs.py) instead of
Celery's, and each task's ids on every line it logs."""
from __future__ import annotations

import sys
from typing import Any

from celery import Task
from celery.signals import setup_logging, task_postrun, task_prerun

from shared import logs
from shared.config import get_settings


@setup_logging.connect
def _configure(**_: Any) -> None:
    """Connected, this stops Celery from installing its own handlers."""
    settings = get_settings()
    component = "beat" if "beat" in sys.argv[1:] else "worker"
    logs.configure(settings.log_format, component, settings.log_level)


@task_prerun.connect
def _bind_task(task_id: str, task: Task, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None,
               **_: Any) -> None:
    logs.clear()
    logs.bind(task=task.name, task_id=task_id, **logs.ids_of(*args, *(kwargs or {}).values()))


@task_postrun.connect
def _unbind_task(**_: Any) -> None:
    logs.clear()
