"""Celery workers: `celery -A worker worker` and `celery -A worker beat` find `worker.celery`."""
from worker.app import celery

__all__ = ["celery"]
