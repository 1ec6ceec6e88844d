"""Benchmarks of the token service: `make bench` (`python -m bench [NAME ...] [--quick]`).

| name | what it measures |
| --- | --- |
| connect | `GET /connect/{token}` and `GET /oauth/callback` beside a hello-world route, same gunicorn |
| refresh | refreshes/s of a worker host against a 100 ms sandbox, beside a bare `requests` pool |
| sweep | one sweep at 100k and 1M connections (1 % due), time and peak memory |
| stampede | 1,000 concurrent token requests on one due connection: provider calls and waits |

Each prints its figures and `bench/report.md` (git-ignored) collects them beside their goals,
with the machine's facts. Figures, never assertions. Everything runs on this machine over
loopback: Redis from REDIS_URL (or a private one) in database BENCH_REDIS_DB (12, flushed before
and after); PostgreSQL from DATABASE_URL, else postgresql+psycopg://postgres@127.0.0.1:5432/test
if it answers, in a database `oauth_bench_<hex>` created and dropped by each benchmark (SQLite
otherwise; `sweep` needs PostgreSQL). BENCH_KEEP_LOGS=1 keeps the processes' logs.
"""
