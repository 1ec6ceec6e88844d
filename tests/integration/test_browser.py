"""The connect pages in a real browser: headless Chromium, driven by Playwright, walks
the sandbox consent page to the success page and back to the tenant's return_url."""
from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.integration.conftest import StackFactory
from tests.integration.stack import Stack, Tenant

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None and os.environ.get("CI"):
    pytest.fail("CI must run the browser tests: apt-get install chromium", pytrace=False)
if CHROMIUM is None:
    pytest.skip("needs Debian's chromium (apt-get install chromium)", allow_module_level=True)
playwright_api = pytest.importorskip("playwright.sync_api")

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


class ReturnPage(BaseHTTPRequestHandler):
    """The tenant's app, where the browser comes back to."""

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        body = b"<!doctype html><title>Example app</title><h1>Back in the example app</h1>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def return_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), ReturnPage)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/done"
    server.shutdown()


@pytest.fixture(scope="module")
def browser_stack(stack_factory: StackFactory) -> Stack:
    return stack_factory(workers=1)


@pytest.fixture(scope="module")
def page() -> Iterator[Any]:
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 900, "height": 640})
        yield context.new_page()
        browser.close()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    """Where the screenshots go: a temporary folder, or docs/ with SCREENSHOT_DIR=docs (make screenshots)."""
    folder = Path(os.environ.get("SCREENSHOT_DIR") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def connect_url(tenant: Tenant, **session: Any) -> str:
    _, integration = tenant.sandbox_integration()
    return tenant.connect_url(integration["id"], **session)


def test_a_user_approves_on_the_consent_page_and_sees_the_success_page(
        browser_stack: Stack, page: Any, shots: Path) -> None:
    tenant = browser_stack.tenant("browser-approve")
    page.goto(connect_url(tenant))
    playwright_api.expect(page.get_by_role("heading", name="Authorize access")).to_be_visible()
    page.screenshot(path=str(shots / "consent.png"))

    page.get_by_role("button", name="Approve").click()

    playwright_api.expect(page.get_by_role("heading", name="Connected")).to_be_visible(timeout=20_000)
    page.screenshot(path=str(shots / "connected.png"))
    attempt_id = urlsplit(page.url).path.rsplit("/", 1)[-1]
    assert urlsplit(page.url).path == f"/connect/attempts/{attempt_id}"
    assert tenant.call("GET", "/connections").json()["data"][0]["status"] == "active"


def test_the_browser_arrives_at_the_return_url_with_the_connection(
        browser_stack: Stack, page: Any, return_url: str) -> None:
    tenant = browser_stack.tenant("browser-return")
    page.goto(connect_url(tenant, return_url=return_url))
    page.get_by_role("button", name="Approve").click()

    page.wait_for_url(f"{return_url}?*", timeout=20_000)
    query = parse_qs(urlsplit(page.url).query)
    assert query["status"] == ["succeeded"]
    connection = tenant.call("GET", f"/connections/{query['connection_id'][0]}")
    assert connection.status_code == 200 and connection.json()["status"] == "active"
    playwright_api.expect(page.get_by_role("heading", name="Back in the example app")).to_be_visible()


def test_a_user_who_denies_sees_a_readable_error_and_no_connection_is_made(
        browser_stack: Stack, page: Any, shots: Path) -> None:
    tenant = browser_stack.tenant("browser-deny")
    page.goto(connect_url(tenant))
    page.get_by_role("button", name="Deny").click()

    playwright_api.expect(page.get_by_role("heading", name="Not connected")).to_be_visible(timeout=20_000)
    assert "access_denied" in page.content()
    page.screenshot(path=str(shots / "denied.png"))
    assert tenant.call("GET", "/connections").json()["data"] == []
