"""Celery workers: `celery -A worker worker` and `celery -A worker beat` find `worker.celery`."""
from worker import logs  # noqa: F401 - connects the logging signals before Celery sets up logging
from worker.app import celery

__all__ = ["celery"]
