"""The Celery application's configuration, built in one place, and the names of its tasks.

The web only sends tasks by name; it never imports the task code."""
from __future__ import annotations

from celery import Celery

from shared.config import Settings

EXCHANGE_CODE = "connect.exchange_code"

# A task's hard time limit; the broker's visibility timeout must stay well above it,
# or Redis would hand a still-running task to a second worker.
TASK_TIME_LIMIT_SECONDS = 120
VISIBILITY_TIMEOUT_SECONDS = 3600


def build_celery(settings: Settings, name: str = "oauth") -> Celery:
    """A Celery app configured from the settings (broker and results on Redis)."""
    app = Celery(name, broker=settings.redis_url, backend=settings.redis_url)
    transport = {"visibility_timeout": VISIBILITY_TIMEOUT_SECONDS}
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        # Redelivery after a crash needs the message kept until the task ends
        # (acks_late) and a slow ack not to be mistaken for a lost worker.
        broker_transport_options=transport,
        result_backend_transport_options=transport,
        visibility_timeout=VISIBILITY_TIMEOUT_SECONDS,
        # One message at a time per worker slot, so a busy slot never hoards work.
        worker_prefetch_multiplier=1,
        task_time_limit=TASK_TIME_LIMIT_SECONDS,
        task_soft_time_limit=TASK_TIME_LIMIT_SECONDS - 10,
        task_ignore_result=True,
        result_expires=3600,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        task_send_sent_event=True,
        worker_send_task_events=True,
    )
    return app
