"""Fixtures of the app's tests.

AppTest runs a session without a network connection: its client context is a mock, not an address,
so `app.access` sees an unknown peer and, failing closed, serves the classroom set. A test of what a
person gets on their own machine (a checkpoint path, an upload) asks for `local_session`, which makes
every session's peer a loopback address; `remote_session` makes it a machine on the network.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from app import access


def _peer(monkeypatch: pytest.MonkeyPatch, address: str) -> None:
    monkeypatch.setattr(access, "peer_address", lambda: address)


@pytest.fixture
def local_session(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Sessions look like a browser on the server's own machine (127.0.0.1)."""
    _peer(monkeypatch, "127.0.0.1")
    yield


@pytest.fixture
def remote_session(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Sessions look like a browser on another machine of the network."""
    _peer(monkeypatch, "192.168.1.23")
    yield
