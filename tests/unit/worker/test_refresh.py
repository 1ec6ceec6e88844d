"""`refresh_once`, the single refresh, against a token endpoint on loopback: each
failure class, the fence, and the per-host slots and breaker."""
from __future__ import annotations

import threading
import time

from shared.fairness import HostSlots, host_of
from shared.models import Connection
from shared.runtime import Runtime
from shared.tokens import fenced_update
from tests.unit.worker.conftest import Reply, TokenEndpoint, connections_at, history, stored
from worker.refresh import MAX_COUNTDOWN_SECONDS, refresh_once


def test_a_due_connection_is_refreshed_and_its_rotated_refresh_token_kept(worker_runtime: Runtime,
                                                                           endpoint: TokenEndpoint) -> None:
    rt = worker_runtime
    (connection_id,) = connections_at(rt, endpoint.url)
    assert refresh_once(rt, connection_id, None).name == "refreshed"
    row = stored(rt, connection_id)
    assert endpoint.grants() == ["old-rt-0"]
    assert rt.cipher.decrypt(row.access_token_enc or "") == "new-at"
    assert rt.cipher.decrypt(row.refresh_token_enc or "") == "new-rt"
    assert row.version == 2 and row.lifetime_seconds == 3600 and row.last_refreshed_at is not None
    assert history(rt, connection_id) == ["refreshed"]


def test_an_answer_without_a_refresh_token_keeps_the_stored_one(worker_runtime: Runtime,
                                                                endpoint: TokenEndpoint) -> None:
    rt = worker_runtime
    (connection_id,) = connections_at(rt, endpoint.url)
    endpoint.replies.append(Reply(body={"access_token": "at2", "expires_in": 3600}))
    assert refresh_once(rt, connection_id, None).name == "refreshed"
    assert rt.cipher.decrypt(stored(rt, connection_id).refresh_token_enc or "") == "old-rt-0"


def test_a_connection_that_is_not_due_is_left_alone(worker_runtime: Runtime, endpoint: TokenEndpoint) -> None:
    rt = worker_runtime
    (connection_id,) = connections_at(rt, endpoint.url, expires_in=3000)
    assert refresh_once(rt, connection_id, None).name == "not_needed"
    assert endpoint.forms == [] and stored(rt, connection_id).version == 1


def test_invalid_grant_and_unauthorized_client_need_the_end_user_again(worker_runtime: Runtime,
                                                                       endpoint: TokenEndpoint) -> None:
    rt = worker_runtime
    for code in ("invalid_grant", "unauthorized_client"):
        (connection_id,) = connections_at(rt, endpoint.url)
        endpoint.replies.append(Reply(400, {"error": code}))
        outcome = refresh_once(rt, connection_id, None)
        assert (outcome.name, outcome.retry_in) == ("needs_reauth", None)
        row = stored(rt, connection_id)
        assert row.status == "needs_reauth" and code in (row.last_error or "")
        assert history(rt, connection_id) == ["needs_reauth"]


def test_a_5xx_is_retried_with_backoff_and_recorded_once(worker_runtime: Runtime, endpoint: TokenEndpoint) -> None:
    rt = worker_runtime
    (connection_id,) = connections_at(rt, endpoint.url)
    endpoint.replies += [Reply(503, {"error": "unavailable"}), Reply(500, b"<h1>oops</h1>")]
    first = refresh_once(rt, connection_id, None, retries=0)
    second = refresh_once(rt, connection_id, None, retries=3)
    assert first.name == second.name == "failed"
    assert first.retry_in is not None and 0.5 <= first.retry_in <= 1
    assert second.retry_in is not None and 4 <= second.retry_in <= 8
    row = stored(rt, connection_id)
    assert row.status == "active" and row.refresh_failures == 2 and row.last_error == "http_500"
    assert history(rt, connection_id) == ["refresh_failed"]
    assert refresh_once(rt, connection_id, None).name == "refreshed"
    assert history(rt, connection_id) == ["refresh_failed", "refreshed", "recovered"]
    assert stored(rt, connection_id).refresh_failures == 0


def test_a_provider_that_never_answers_is_a_timeout_to_retry(worker_runtime: Runtime,
                                                              endpoint: TokenEndpoint) -> None:
    rt = worker_runtime
    (connection_id,) = connections_at(rt, endpoint.url)
    with endpoint.hold():
        started = time.monotonic()
        outcome = refresh_once(rt, connection_id, None)
    assert outcome.name == "failed" and outcome.retry_in is not None
    assert time.monotonic() - started < 2.5
    assert stored(rt, connection_id).last_error == "timeout after 1s"


def test_a_refused_connection_is_retried(worker_runtime: Runtime) -> None:
    rt = worker_runtime
    (connection_id,) = connections_at(rt, "http://127.0.0.1:9/token")
    outcome = refresh_once(rt, connection_id, None)
    assert outcome.name == "failed" and outcome.retry_in is not None
    assert "connection error" in (stored(rt, connection_id).last_error or "")


def test_429_waits_for_its_retry_after_and_a_long_one_holds_everyone_off(worker_runtime: Runtime,
                                                                          endpoint: TokenEndpoint) -> None:
    rt = worker_runtime
    short, long = connections_at(rt, endpoint.url, count=2)
    endpoint.replies += [Reply(429, {"error": "slow_down"}, {"Retry-After": "7"}),
                         Reply(429, {}, {"Retry-After": "3600"})]
    assert refresh_once(rt, short, None).retry_in == 7
    held = refresh_once(rt, long, None)
    assert held.retry_in is None and held.hold_for == 3600 > MAX_COUNTDOWN_SECONDS
    assert stored(rt, long).status == "active"


def test_a_connection_without_a_refresh_token_needs_reauth_once_expired(worker_runtime: Runtime,
                                                                        endpoint: TokenEndpoint) -> None:
    rt = worker_runtime
    (connection_id,) = connections_at(rt, endpoint.url, expires_in=-5, refresh_token=None)
    assert refresh_once(rt, connection_id, None).name == "needs_reauth"
    assert endpoint.forms == []


def test_an_answer_that_lost_the_race_to_a_newer_write_is_dropped(worker_runtime: Runtime,
                                                                  endpoint: TokenEndpoint) -> None:
    rt = worker_runtime
    (connection_id,) = connections_at(rt, endpoint.url)
    endpoint.replies.append(Reply(delay=0.3))
    def meanwhile() -> None:
        time.sleep(0.1)
        with rt.db.session() as session:
            assert fenced_update(session, connection_id, 1, {"last_error": "someone else"})

    writer = threading.Thread(target=meanwhile)
    writer.start()
    assert refresh_once(rt, connection_id, None).name == "stale"
    writer.join()
    row = stored(rt, connection_id)
    assert row.version == 2 and row.last_error == "someone else"
    assert rt.cipher.decrypt(row.access_token_enc or "") == "old-at-0"


def test_a_host_without_free_slots_is_not_called_and_the_refresh_deferred(worker_runtime: Runtime,
                                                                          endpoint: TokenEndpoint) -> None:
    rt = worker_runtime
    (connection_id,) = connections_at(rt, endpoint.url)
    slots = HostSlots(rt.redis, limit=4, lease_seconds=30)
    taken = slots.acquire(host_of(endpoint.url), 4)
    outcome = refresh_once(rt, connection_id, None)
    assert outcome.name == "deferred" and outcome.defer_in is not None and outcome.defer_in <= 1
    assert endpoint.forms == [] and stored(rt, connection_id).version == 1
    slots.release(host_of(endpoint.url), taken)
    assert refresh_once(rt, connection_id, None).name == "refreshed"


def test_a_failing_host_opens_its_breaker_until_a_probe_succeeds(worker_runtime: Runtime,
                                                                 endpoint: TokenEndpoint) -> None:
    rt = worker_runtime  # five failures in a row open it for 1 s
    ids = connections_at(rt, endpoint.url, count=7)
    endpoint.replies += [Reply(502, b"bad gateway")] * 5
    assert [refresh_once(rt, cid, None).name for cid in ids[:5]] == ["failed"] * 5
    deferred = refresh_once(rt, ids[5], None)
    assert deferred.name == "deferred" and deferred.defer_in is not None and 0 < deferred.defer_in <= 1
    assert len(endpoint.forms) == 5, "an open breaker sends nothing"
    time.sleep(1.1)
    assert refresh_once(rt, ids[5], None).name == "refreshed", "the half-open probe goes"
    assert refresh_once(rt, ids[6], None).name == "refreshed", "and its success closes the breaker"
    assert isinstance(stored(rt, ids[6]), Connection)
