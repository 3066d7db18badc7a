"""The running agent: the gRPC server around CheckpointService, with health, reflection, (m)TLS, bounded
concurrency and a graceful shutdown (the service and its status codes: lpm.agent.service)."""

from __future__ import annotations

import logging
import signal
import threading
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from lpm.agent import transfer
from lpm.agent.config import AgentConfig
from lpm.agent.deps import Deps
from lpm.agent.service import AGENT_VERSION, SERVICE_NAME, CheckpointService

log = logging.getLogger(__name__)


class AgentServer:
    """The running agent: gRPC server + health + the freezer's timers. `start()`, then `wait()` or `stop()`."""

    def __init__(self, cfg: AgentConfig, deps: Deps) -> None:
        self.cfg = cfg
        self.deps = deps
        self.health = health.HealthServicer()
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=deps.max_concurrent + 8, thread_name_prefix="lpm-agent"),
            maximum_concurrent_rpcs=deps.max_concurrent * 4 + 16,
        )
        transfer.add_to_server(CheckpointService(deps), self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            self.server,
        )
        self.port = self._bind()
        self._stopped = threading.Event()
        self._done = threading.Event()

    def _bind(self) -> int:
        if self.cfg.insecure:
            log.warning("serving PLAINTEXT gRPC on %s (--insecure)", self.cfg.listen)
            return self.server.add_insecure_port(self.cfg.listen)
        if not (self.cfg.tls_cert and self.cfg.tls_key):
            raise SystemExit(
                "lpm-agent: --tls-cert and --tls-key are required (or --insecure for plaintext, tests only)"
            )
        key = Path(self.cfg.tls_key).read_bytes()
        cert = Path(self.cfg.tls_cert).read_bytes()
        client_ca = Path(self.cfg.tls_client_ca).read_bytes() if self.cfg.tls_client_ca else None
        creds = grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
        )
        log.info(
            "serving gRPC with TLS on %s (%s)", self.cfg.listen, "mutual TLS" if client_ca else "no client certificates"
        )
        return self.server.add_secure_port(self.cfg.listen, creds)

    def start(self) -> None:
        removed = self.deps.store.clean_stale_temps()
        if removed:
            log.info("start-up: removed stale temp files %s", removed)
        self.deps.freezer.start()
        if self.deps.restore_logs is not None:
            self.deps.restore_logs.start()
        self.server.start()
        self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        self.health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
        log.info("lpm-agent %s on node %s listening on port %d", AGENT_VERSION, self.deps.node_name, self.port)

    def stop(self, grace: float | None = None) -> None:
        """Graceful: report NOT_SERVING, refuse new calls, let running ones finish within `grace`."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.health.enter_graceful_shutdown()
        self.server.stop(self.cfg.shutdown_grace if grace is None else grace).wait()
        self.deps.freezer.stop()  # frozen containers stay frozen; their records make the next agent thaw them
        if self.deps.restore_logs is not None:
            self.deps.restore_logs.stop()
        self.deps.kubelet.close()
        self.deps.store.close()
        log.info("lpm-agent stopped")
        self._done.set()

    def wait(self) -> None:
        """Until the server has terminated and, if a stop is under way, it has finished its cleanup."""
        self.server.wait_for_termination()
        if self._stopped.is_set():
            self._done.wait()

    def serve_until_signalled(self) -> None:
        """Start, serve until SIGTERM/SIGINT, then stop gracefully — all on the main thread.

        The handler only sets an event; the main thread polls it, so a signal that arrives at any moment
        (even before `start` returns) is acted on, and the graceful stop never runs inside a signal handler.
        """
        requested = threading.Event()

        def on_signal(signum: int, _frame: Any) -> None:
            log.info("signal %d: shutting down gracefully", signum)
            requested.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        self.start()
        while not requested.wait(0.5):
            pass
        self.stop()
