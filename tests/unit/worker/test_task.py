"""The task base class and the lazily configured Celery app of the workers."""
from __future__ import annotations

import subprocess
import sys

from shared.crypto import new_fernet_key
from shared.queue import DELIVER_WEBHOOK, EXCHANGE_CODE, REFRESH_BATCH, REFRESH_CONNECTION, REQUEUE_WEBHOOKS, SWEEP_DUE

NAMES = {EXCHANGE_CODE, REFRESH_CONNECTION, REFRESH_BATCH, SWEEP_DUE, DELIVER_WEBHOOK, REQUEUE_WEBHOOKS}


def test_importing_the_worker_and_its_task_modules_reads_no_settings() -> None:
    # No SECRET_KEY or TOKEN_ENCRYPTION_KEYS: reading the settings would stop the program.
    code = ("import importlib, worker; from worker.app import TASK_MODULES, celery\n"
            "[importlib.import_module(m) for m in TASK_MODULES]\n"
            "assert not celery.configured, 'configured on import'\n")
    env = {"PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_every_task_is_a_keeper_task_acknowledged_late_and_redelivered_if_its_worker_dies() -> None:
    # Looking at the tasks configures the app, which reads the settings: in a process of its own.
    code = ("import importlib; from worker.app import TASK_MODULES, celery; from worker.task import KeeperTask\n"
            "[importlib.import_module(m) for m in TASK_MODULES]\n"
            f"for name in {sorted(NAMES)!r}:\n"
            "    task = celery.tasks[name]\n"
            "    assert isinstance(task, KeeperTask), name\n"
            "    assert task.acks_late and task.reject_on_worker_lost and task.ignore_result, name\n"
            "print(celery.conf.worker_pool, celery.conf.task_acks_late)\n")
    env = {"PATH": "/usr/bin:/bin", "SECRET_KEY": "x" * 32, "TOKEN_ENCRYPTION_KEYS": new_fernet_key(),
           "REDIS_URL": "redis://127.0.0.1:1/0"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[0] == "threads"
