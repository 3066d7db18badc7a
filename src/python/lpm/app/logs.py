"""Logging setup: plain text for people, JSON lines for log pipelines. Secrets never reach a log:
certificates and keys are logged by path only, checkpoint contents never."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

_RESERVED = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update({k: v for k, v in record.__dict__.items() if k not in _RESERVED})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def add_logging_flags(parser: Any) -> None:
    from lpm.app.flags import add_flag

    group = parser.add_argument_group("logging")
    add_flag(
        group,
        "--log-level",
        "LPM_LOG_LEVEL",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="Log level.",
    )
    add_flag(group, "--log-format", "LPM_LOG_FORMAT", default="text", choices=["text", "json"], help="Log format.")
