"""The agent's start-up waits for its host ports instead of crashing while a previous agent still holds them."""

from __future__ import annotations

import socket
import threading

import pytest

from lpm.agent.main import when_port_free


def _bind(port: int) -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", port))
    s.listen()
    return s


def test_a_port_held_by_the_previous_agent_is_waited_for_then_taken() -> None:
    old = _bind(0)
    port = old.getsockname()[1]
    threading.Timer(0.5, old.close).start()  # the old agent's process finally exits
    new = when_port_free(lambda: _bind(port), "metrics", timeout=10)
    assert new.getsockname()[1] == port
    new.close()


def test_a_port_that_stays_taken_fails_after_the_wait_and_other_errors_at_once() -> None:
    old = _bind(0)
    port = old.getsockname()[1]
    try:
        with pytest.raises(OSError):
            when_port_free(lambda: _bind(port), "metrics", timeout=0.3)
    finally:
        old.close()
    calls = []

    def broken() -> None:
        calls.append(1)
        raise PermissionError(13, "Permission denied")

    with pytest.raises(PermissionError):
        when_port_free(broken, "metrics", timeout=10)
    assert calls == [1]
