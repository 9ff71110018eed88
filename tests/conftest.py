"""Shared fixtures, and the rule that a reference check may not be skipped in CI.

``http_server(directory, handler=None) -> base_url`` serves a folder on 127.0.0.1 at a free port
from a background thread (stopped at the end of the test) and logs each request in
``http_server.requests``. ``free_port`` is a port with nothing listening on it.

Under ``CI=true`` (set by .ci/run) a test or a test module skipped because a library is missing
(``pytest.importorskip``'s "could not import ...", or a skip saying "... is not installed") fails
instead: the reference comparisons (SciPy, scikit-image, Quantus, LXT) must run there, and a fresh
clone's set-up installs them (``scripts/setup.sh``: the ``[dev]`` extra). Elsewhere they still skip.
"""

from __future__ import annotations

import functools
import os
import socket
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

# skip reasons that mean "a library is missing"; under CI=true they are failures
MISSING_LIBRARY = ("could not import", "is not installed")


def missing_library_skip(report: pytest.TestReport | pytest.CollectReport) -> str | None:
    """The skip reason of `report` when it says a library is missing, else None."""
    if not report.skipped:
        return None
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return reason if any(key in reason for key in MISSING_LIBRARY) else None


def _fail_in_ci(report: pytest.TestReport | pytest.CollectReport) -> None:
    reason = missing_library_skip(report) if os.environ.get("CI") == "true" else None
    if reason is not None:
        report.outcome = "failed"
        report.longrepr = (f"skipped for a missing library under CI=true, which must run every reference check "
                           f"(bash scripts/setup.sh installs the [dev] extra): {reason}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> pytest.TestReport:
    report = yield
    _fail_in_ci(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> pytest.CollectReport:
    report = yield  # a module-level pytest.importorskip skips the whole module at collection
    _fail_in_ci(report)
    return report


class QuietHandler(SimpleHTTPRequestHandler):
    """Serves files without printing a log line per request; records each request on the server."""

    def log_message(self, format: str, *args: object) -> None:
        pass

    def parse_request(self) -> bool:
        ok = super().parse_request()
        if ok:
            self.server.request_log.append(f"{self.command} {self.path}")  # type: ignore[attr-defined]
        return ok


class LocalHTTPServers:
    """Callable fixture value: ``servers(directory, handler=None)`` starts a server, returns its URL."""

    def __init__(self) -> None:
        self.requests: list[str] = []  # "GET /path", across every server this fixture started
        self._running: list[tuple[ThreadingHTTPServer, threading.Thread]] = []

    def __call__(self, directory: str | Path, handler: type[SimpleHTTPRequestHandler] | None = None) -> str:
        factory = functools.partial(handler or QuietHandler, directory=str(directory))
        server = ThreadingHTTPServer(("127.0.0.1", 0), factory)
        server.daemon_threads = True  # a stuck handler must not keep the test process alive
        server.request_log = self.requests  # type: ignore[attr-defined]
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        self._running.append((server, thread))
        return f"http://127.0.0.1:{server.server_address[1]}"

    def close(self) -> None:
        for server, thread in self._running:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)
        self._running.clear()


@pytest.fixture
def http_server() -> Iterator[LocalHTTPServers]:
    """Start local HTTP servers with ``http_server(directory) -> base_url``; all stop after the test."""
    servers = LocalHTTPServers()
    try:
        yield servers
    finally:
        servers.close()


@pytest.fixture
def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (connecting to it is refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="session")
def browser():
    """A headless Debian Chromium driven by playwright (never `playwright install`).

    Skipped where /usr/bin/chromium is missing, except under T2T_LENS_REQUIRE_BROWSER=1 (CI), where
    a missing browser fails the test instead of hiding it.
    """
    if not CHROMIUM.exists():
        if os.environ.get("T2T_LENS_REQUIRE_BROWSER"):
            pytest.fail("Chromium is required (T2T_LENS_REQUIRE_BROWSER=1) but /usr/bin/chromium is missing")
        pytest.skip("Debian's chromium is not installed (apt-get install chromium chromium-driver)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()
