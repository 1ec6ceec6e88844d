"""Gunicorn settings: `gunicorn "web:create_app()"` is production-ready with this file alone.

Environment: PORT (8000), WEB_CONCURRENCY (processes), WEB_THREADS (threads per process),
GUNICORN_TIMEOUT (seconds), GUNICORN_LOG_LEVEL (info)."""
import gc
import multiprocessing
import os
import shutil
import tempfile

from gunicorn.glogging import Logger

from shared.logs import gunicorn_logconfig


def _int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    return int(value) if value else default


bind = f"0.0.0.0:{_int('PORT', 8000)}"

# Threads, not one request per process: `GET /api/v1/connections/{id}/token` may
# wait up to TOKEN_WAIT_SECONDS for a refresh to land, and while it waits, it must
# hold up no other request. Each process serves WEB_THREADS requests at once.
worker_class = "gthread"
workers = _int("WEB_CONCURRENCY", min(2 * multiprocessing.cpu_count() + 1, 8))
threads = _int("WEB_THREADS", 32)

# A request may wait TOKEN_WAIT_SECONDS (10 by default) and the provider call behind
# it is bounded by HTTP_TIMEOUT_SECONDS, so 30 s is ample; a stuck worker is recycled.
timeout = _int("GUNICORN_TIMEOUT", 30)
graceful_timeout = 30
keepalive = 5

# Recycle processes now and then, staggered, to bound any slow leak; rarely, because a
# restarting process answers nothing for about a second.
max_requests = 200_000
max_requests_jitter = 20_000

# Behind a proxy (compose, a load balancer): honour its X-Forwarded-* headers.
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")

# Logs go to stderr, for the process manager to collect: one JSON object per line
# (LOG_FORMAT=text for plain lines), with secrets redacted (shared/logs.py).
accesslog = "-"
errorlog = "-"
loglevel = os.environ.get("GUNICORN_LOG_LEVEL", "info")
logconfig_dict = gunicorn_logconfig(os.environ.get("LOG_FORMAT", "json").lower(),
                                    os.environ.get("LOG_LEVEL", "INFO").upper())
# Method and path only, never the query string: the OAuth callback carries the
# authorization `code` (and `state`) in its query, and a code must never reach a
# log. So no %(r)s (the request line), no %(q)s (the query) and no %(U)s?%(q)s.
# The referer is left out for the same reason (it may hold a query string too).
access_log_format = '%(h)s "%(m)s %(U)s" %(s)s %(B)s %(M)sms "%(a)s"'


class RedactingLogger(Logger):
    """The path of a connect link is its single-use token: log the route, not the token."""

    def atoms(self, resp, req, environ, request_time):  # type: ignore[no-untyped-def]
        atoms = super().atoms(resp, req, environ, request_time)
        path = atoms.get("U", "")
        if path.startswith("/connect/") and not path.startswith("/connect/attempts/"):
            atoms["U"] = "/connect/<token>"
        return atoms


logger_class = RedactingLogger

# Gunicorn 25+ opens a control socket at one fixed path per user
# (~/.gunicorn/gunicorn.ctl): several instances on one host would fight over it,
# and a container's home may be read-only. Nothing here uses it. (Older gunicorns
# ignore this unknown name.)
control_socket_disable = True


# Request metrics are counted in prometheus-client's multiprocess mode, so that
# /metrics sums every process's counts: each process writes to files in this folder.
# Set here, before any process imports prometheus_client; a fresh folder per start.
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="oauth-keeper-metrics-")
    _OWN_METRICS_DIR = True
else:
    _OWN_METRICS_DIR = False


def on_starting(server: object) -> None:
    """Check the settings once in the master: a missing one stops gunicorn with one
    line, instead of workers failing to boot over and over. Then start the metrics
    from zero."""
    from shared.config import load_settings

    load_settings()
    folder = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    os.makedirs(folder, exist_ok=True)
    for name in os.listdir(folder):
        if name.endswith(".db"):
            os.remove(os.path.join(folder, name))


def post_worker_init(worker: object) -> None:
    """Leave the loaded application out of the garbage collector's full passes: they
    would walk every module, route and mapper on each pass and show as tail latency."""
    gc.collect()
    gc.freeze()


def child_exit(server: object, worker: object) -> None:
    """A process that is gone no longer counts toward the live gauges."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)  # type: ignore[attr-defined]


def on_exit(server: object) -> None:
    """Remove the metrics folder this configuration made."""
    if _OWN_METRICS_DIR:
        shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)
