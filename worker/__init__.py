"""Celery workers: `celery -A worker worker` and `celery -A worker beat` find `worker.celery`."""
from worker import logs, metrics  # noqa: F401 - connect their signals before Celery sets up the worker
from worker.app import celery

__all__ = ["celery"]
