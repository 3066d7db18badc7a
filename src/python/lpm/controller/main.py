"""lpm-controller entry point."""

from __future__ import annotations

import logging
import sys

from lpm.api.models import RESOURCES
from lpm.app.logs import setup_logging
from lpm.controller import config

log = logging.getLogger("lpm.controller")


def main(argv: list[str] | None = None) -> int:
    cfg = config.parse(argv)
    setup_logging(cfg.log_level, cfg.log_format)
    if cfg.self_check:
        kinds = ", ".join(r.KIND for r in RESOURCES)  # type: ignore[attr-defined]
        print(f"lpm-controller self-check: kinds {kinds}; agents in namespace {cfg.agent_namespace}")
        return 0
    log.error("the reconcilers are not wired yet")
    return 2


if __name__ == "__main__":
    sys.exit(main())
