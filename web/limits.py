"""Rate limits (flask-limiter on the service's Redis): per client address on the browser
flow, per tenant on the API. The counters are shared by every process, which leases
them in blocks so that a busy tenant's request seldom waits on Redis
(`web.limit_leases`). They fail open: with Redis down, nothing is limited and every
request is still served."""
from __future__ import annotations

import math
import time

from flask import Blueprint, Flask, Response, current_app, g, render_template, request
from flask_limiter import Limiter
from flask_limiter.errors import RateLimitExceeded
from flask_limiter.util import get_remote_address
from werkzeug.middleware.proxy_fix import ProxyFix

from shared.runtime import Runtime
from web.auth import authenticate
from web.errors import ApiError
from web.limit_leases import LeasedRedisStorage

# Above any real wait, so a client always gets a usable Retry-After.
MAX_RETRY_AFTER_SECONDS = 3600


def tenant_key() -> str:
    """The API's limit key: the authenticated tenant. A request without a valid key is
    counted by its client address instead, and still gets its 401 from the API."""
    if "tenant_id" not in g:
        try:
            authenticate()
        except ApiError:
            return f"address:{get_remote_address()}"
    return f"tenant:{g.tenant_id}"


def init_limits(app: Flask, rt: Runtime, browser: list[Blueprint], api: list[Blueprint]) -> Limiter:
    """Limit the `browser` blueprints per client address and the `api` ones per tenant."""
    settings = rt.settings
    if settings.trusted_proxy_count:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=settings.trusted_proxy_count)  # type: ignore[method-assign]
    limiter = Limiter(
        get_remote_address,
        # Counters in the runtime's Redis, leased to this process in blocks (web/limit_leases.py).
        storage_uri=f"{LeasedRedisStorage.STORAGE_SCHEME[0]}://",
        storage_options={"client": rt.redis},  # type: ignore[dict-item]
        strategy="fixed-window",
        key_prefix="ratelimit",
        swallow_errors=True,  # Redis down: fail open, keep serving
        in_memory_fallback_enabled=False,  # per-process counters would not be the limit either
    )
    limiter.init_app(app)
    for blueprint in browser:
        limiter.shared_limit(settings.browser_rate_limit, scope="browser")(blueprint)
    for blueprint in api:
        limiter.shared_limit(settings.api_rate_limit, scope="api", key_func=tenant_key,
                             exempt_when=lambda: request.endpoint == "api.openapi")(blueprint)
    app.register_error_handler(RateLimitExceeded, too_many_requests)
    app.extensions["rate_limits"] = limiter
    return limiter


def _retry_after() -> int:
    """Seconds until the breached window resets, at least 1."""
    limiter: Limiter = current_app.extensions["rate_limits"]
    limit = limiter.current_limit
    reset_at = limit.reset_at if limit else time.time() + 1
    return min(max(1, math.ceil(reset_at - time.time())), MAX_RETRY_AFTER_SECONDS)


def too_many_requests(error: RateLimitExceeded) -> Response | tuple[str, int, dict[str, str]]:
    """429 with Retry-After: JSON with code `rate_limited` under /api, a page in the browser."""
    headers = {"Retry-After": str(_retry_after())}
    if request.path.startswith("/api/"):
        return ApiError(429, "rate_limited", f"rate limit exceeded ({error.description}); retry later",
                        headers=headers).response()
    page = render_template("message.html", title="Too many requests",
                           message="Too many requests from this address. Wait a moment, then try again.")
    return page, 429, headers
