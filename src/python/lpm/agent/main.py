"""lpm-agent entry point: parse flags, wire the service, serve until SIGTERM."""

from __future__ import annotations

import errno
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, TypeVar

from lpm.agent import config
from lpm.api.agent.v1 import agent_pb2
from lpm.app.logs import setup_logging

log = logging.getLogger("lpm.agent")
T = TypeVar("T")
PORT_WAIT_SECONDS = 60.0


def when_port_free(start: Callable[[], T], what: str, timeout: float = PORT_WAIT_SECONDS) -> T:
    """Start something that binds a host port, waiting while it is in use: with host networking, the process of
    a force-deleted agent can hold the ports for seconds after its replacement starts, and crashing then costs
    the kubelet's restart back-off (measured: +10 s or more on every agent restart) while sources wait."""
    deadline = time.monotonic() + timeout
    delay = 0.1
    while True:
        try:
            return start()
        except (OSError, RuntimeError) as exc:
            in_use = getattr(exc, "errno", None) == errno.EADDRINUSE or "bind" in str(exc).lower()
            if not in_use or time.monotonic() + delay > deadline:
                raise
            log.info("%s: port still in use (the previous agent on this node is exiting?); retrying", what)
            time.sleep(delay)
            delay = min(delay * 2, 1.0)


def export_checkpoint(cfg: config.AgentConfig, out: BinaryIO) -> int:
    """`--export-checkpoint`: the runtime's own archive of one stored checkpoint, decrypted and verified."""
    from lpm.storage.backend import StorageError
    from lpm.storage.sealing import KeyDirectory
    from lpm.storage.store import open_store
    from lpm.storage.uri import ArtifactRef, InvalidArtifactURI

    if out.isatty():
        print("lpm-agent: --export-checkpoint writes a tar to stdout; redirect it to a file", file=sys.stderr)
        return 2
    keys = KeyDirectory(Path(cfg.encryption_keys)) if cfg.encryption_keys else None
    try:
        store = open_store(cfg.storage, cfg.node_name, keys)
        try:
            size = 0
            for chunk in store.read_raw(ArtifactRef.parse(cfg.export_checkpoint)):
                out.write(chunk)
                size += len(chunk)
            out.flush()
        finally:
            store.close()
    except (StorageError, InvalidArtifactURI, OSError) as exc:
        print(f"lpm-agent: cannot export {cfg.export_checkpoint}: {exc} (any output is incomplete)", file=sys.stderr)
        return 1
    print(f"lpm-agent: exported {cfg.export_checkpoint}: {size} bytes, sha256 verified", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    cfg = config.parse(argv)
    setup_logging(cfg.log_level, cfg.log_format)
    if cfg.self_check:
        names = sorted(agent_pb2.DESCRIPTOR.services_by_name["CheckpointService"].methods_by_name)
        print(f"lpm-agent self-check: CheckpointService methods {', '.join(names)}; storage {cfg.storage}")
        return 0
    if cfg.export_checkpoint:
        return export_checkpoint(cfg, sys.stdout.buffer)
    from lpm.agent.deps import build_deps  # grpc server stack only when serving
    from lpm.agent.server import AgentServer

    if cfg.metrics_port:
        from prometheus_client import start_http_server

        when_port_free(lambda: start_http_server(cfg.metrics_port), f"metrics on port {cfg.metrics_port}")
    deps = build_deps(cfg)
    when_port_free(lambda: AgentServer(cfg, deps), f"gRPC on {cfg.listen}").serve_until_signalled()
    return 0


if __name__ == "__main__":
    sys.exit(main())
