"""The Celery application's configuration, built in one place, and the names of its tasks.

The web only sends tasks by name; it never imports the task code."""
from __future__ import annotations

from typing import Any

from celery import Celery
from kombu import Queue

from shared.config import Settings

EXCHANGE_CODE = "connect.exchange_code"
REFRESH_CONNECTION = "tokens.refresh_connection"
SWEEP_DUE = "tokens.sweep_due"
REFRESH_BATCH = "tokens.refresh_batch"
REVOKE_CONNECTION = "connections.revoke"
REVOKE_LEFTOVERS = "connections.revoke_leftovers"
PRUNE_HISTORY = "history.prune"
DELIVER_WEBHOOK = "webhooks.deliver"
REQUEUE_WEBHOOKS = "webhooks.requeue_due"
# Work someone waits for (a browser, an API call) goes to its own queue, so that it
# is never stuck behind the sweep's backlog; workers consume both.
INTERACTIVE_QUEUE = "interactive"
DEFAULT_QUEUE = "celery"
# Webhook deliveries have a queue of their own, so they never wait behind refreshes
# (and a tenant's slow endpoint never holds up a refresh).
WEBHOOK_QUEUE = "webhooks"
# kombu's Redis transport, publishing without building a Redis client each time.
BROKER_TRANSPORT = "shared.broker:Transport"


def build_celery(settings: Settings, name: str = "oauth") -> Celery:
    """A Celery app configured from the settings (broker and results on Redis)."""
    app = Celery(name)
    app.conf.update(celery_config(settings))
    return app


def celery_config(settings: Settings) -> dict[str, Any]:
    """The Celery configuration every process shares: broker, results, redelivery."""
    # The broker's visibility timeout stays well above every task's hard time limit
    # (checked by the settings), or Redis would hand a running task to a second worker.
    # It is set in all three places Celery and kombu read it.
    visibility = settings.broker_visibility_timeout_seconds
    transport = {
        "visibility_timeout": visibility,
        # How often a worker looks for messages of dead workers to redeliver: a
        # tenth of the visibility timeout, at most every 10 s (not kombu's ~100 s).
        "unacked_restore_interval": max(1, min(10, visibility // 10)),
        "unacked_restore_throttle": 1,
    }
    return dict(
        broker_url=settings.redis_url,
        broker_transport=BROKER_TRANSPORT,
        result_backend=settings.redis_url,
        task_queues=(Queue(INTERACTIVE_QUEUE), Queue(WEBHOOK_QUEUE), Queue(DEFAULT_QUEUE)),
        task_default_queue=DEFAULT_QUEUE,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        # Redelivery after a crash needs the message kept until the task ends
        # (acks_late) and a slow ack not to be mistaken for a lost worker.
        broker_transport_options=transport,
        result_backend_transport_options=transport,
        visibility_timeout=visibility,
        # One message at a time per worker slot, so a busy slot never hoards work.
        worker_prefetch_multiplier=1,
        # Enforced by the prefork pool; under threads, every provider call is
        # bounded by HTTP_TIMEOUT_SECONDS instead.
        task_time_limit=settings.task_time_limit_seconds,
        task_ignore_result=True,
        result_expires=3600,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        # Task events for Flower come from workers started with -E; a "sent" event
        # per message would double the cost of queueing.
        task_send_sent_event=False,
    )
