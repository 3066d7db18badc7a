"""lpm-agent entry point: parse flags, wire the service, serve until SIGTERM."""

from __future__ import annotations

import logging
import sys

from lpm.agent import config
from lpm.agent.v1 import agent_pb2
from lpm.app.logs import setup_logging

log = logging.getLogger("lpm.agent")


def main(argv: list[str] | None = None) -> int:
    cfg = config.parse(argv)
    setup_logging(cfg.log_level, cfg.log_format)
    if cfg.self_check:
        names = sorted(agent_pb2.DESCRIPTOR.services_by_name["CheckpointService"].methods_by_name)
        print(f"lpm-agent self-check: CheckpointService methods {', '.join(names)}; storage {cfg.storage}")
        return 0
    from lpm.agent.server import AgentServer, build_deps  # grpc server stack only when serving

    if cfg.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(cfg.metrics_port)
    AgentServer(cfg, build_deps(cfg)).serve_until_signalled()
    return 0


if __name__ == "__main__":
    sys.exit(main())
