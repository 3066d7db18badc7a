"""lpm-controller entry point: configuration, logging, metrics, then the kopf runtime."""

from __future__ import annotations

import logging
import secrets
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from lpm.api.models import RESOURCES
from lpm.app.logs import setup_logging
from lpm.controller import config

if TYPE_CHECKING:
    from lpm.controller.runtime import Runtime
    from lpm.controller.webhooks import WebhookConfig

log = logging.getLogger("lpm.controller")


def build_runtime(cfg: config.ControllerConfig) -> Runtime:
    from kubernetes import client
    from kubernetes import config as kconfig

    from lpm.api import constants as c
    from lpm.controller.agents import TLS, Agents
    from lpm.controller.kube import Kube
    from lpm.controller.runtime import Runtime

    if cfg.kubeconfig:
        api_client = kconfig.new_client_from_config(config_file=cfg.kubeconfig)
    else:
        kconfig.load_incluster_config()
        api_client = client.ApiClient()
    api_client.configuration.connection_pool_maxsize = max(cfg.workers, 4)
    api_client.rest_client.pool_manager.connection_pool_kw["maxsize"] = max(cfg.workers, 4)
    kube = Kube(api_client)

    def agent_pods(node: str) -> list[dict[str, object]]:
        return kube.list(
            "pods", cfg.agent_namespace, label_selector=c.AGENT_LABEL_SELECTOR, field_selector=f"spec.nodeName={node}"
        )

    tls = TLS(
        cert=cfg.agent_tls_cert,
        key=cfg.agent_tls_key,
        ca=cfg.agent_tls_ca,
        server_name=cfg.agent_tls_server_name,
        insecure=cfg.insecure_agents,
    )
    return Runtime(kube=kube, agents=Agents(agent_pods, cfg.agent_namespace, tls))


def _webhook(cfg: config.ControllerConfig) -> WebhookConfig | None:
    from lpm.controller.webhooks import WebhookConfig

    if not (cfg.webhook_port and cfg.webhook_cert and cfg.webhook_key):
        log.info("admission webhooks off (no --webhook-cert/--webhook-key): owned pods are not handed over")
        return None
    missing = [f for f in (cfg.webhook_cert, cfg.webhook_key) if not Path(f).is_file()]
    if missing:
        log.warning(
            "admission webhooks off: %s missing (Secret lpm-controller-webhook-tls; deploy/certs/generate.sh makes "
            "it): owned pods are not handed over, and evictions are not turned into migrations",
            ", ".join(missing),
        )
        return None
    return WebhookConfig(
        cfg.webhook_port, cfg.webhook_cert, cfg.webhook_key, cfg.webhook_ca, cfg.max_migrations_per_node
    )


def main(argv: list[str] | None = None) -> int:
    cfg = config.parse(argv)
    setup_logging(cfg.log_level, cfg.log_format)
    if cfg.self_check:
        kinds = ", ".join(r.KIND for r in RESOURCES)
        print(f"lpm-controller self-check: kinds {kinds}; agents in namespace {cfg.agent_namespace}")
        return 0
    if not cfg.insecure_agents and not (cfg.agent_tls_cert and cfg.agent_tls_key and cfg.agent_tls_ca):
        log.error("agent mTLS needs --agent-tls-cert, --agent-tls-key and --agent-tls-ca (or --insecure-agents)")
        return 2
    from prometheus_client import start_http_server

    from lpm.controller import kopf_wiring
    from lpm.controller.retention import RetentionPolicy

    if cfg.metrics_port:
        start_http_server(cfg.metrics_port)
    rt = build_runtime(cfg)
    kopf_wiring.run(
        rt,
        namespace=cfg.namespace,
        standalone=cfg.standalone,
        peering=cfg.peering,
        resync_seconds=cfg.resync_seconds,
        workers=cfg.workers,
        priority=cfg.priority or secrets.randbelow(2**30) + 1,
        retention_policy=RetentionPolicy.parse(cfg.checkpoint_retention),
        orphan_sweep=(cfg.orphan_sweep_seconds, cfg.orphan_grace_seconds),
        webhook=_webhook(cfg),
        liveness_endpoint=f"http://0.0.0.0:{cfg.health_port}/healthz" if cfg.health_port else None,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
