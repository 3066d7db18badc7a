"""The controller's webhook configuration: on with a certificate, off (and saying so) without one."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from lpm.controller import config
from lpm.controller.main import _webhook


def test_webhooks_are_on_with_a_certificate_and_key(tmp_path: Path) -> None:
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert.write_text("c")
    key.write_text("k")
    cfg = config.parse(["--webhook-cert", str(cert), "--webhook-key", str(key), "--max-migrations-per-node", "3"])
    hook = _webhook(cfg)
    assert hook is not None and (hook.port, hook.cert, hook.max_migrations_per_node) == (9443, str(cert), 3)


def test_a_missing_secret_turns_the_webhooks_off_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = config.parse(["--webhook-cert", str(tmp_path / "tls.crt"), "--webhook-key", str(tmp_path / "tls.key")])
    with caplog.at_level(logging.WARNING):
        assert _webhook(cfg) is None
    assert "lpm-controller-webhook-tls" in caplog.text
    assert _webhook(config.parse([])) is None
    assert _webhook(config.parse(["--webhook-port", "0", "--webhook-cert", "a", "--webhook-key", "b"])) is None
