"""The controller's configuration: flags with environment fallbacks (the Deployment sets the environment)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from lpm.app.flags import add_flag, add_switch
from lpm.app.logs import add_logging_flags


@dataclass(frozen=True)
class ControllerConfig:
    kubeconfig: str | None
    namespace: str | None
    agent_namespace: str
    agent_tls_cert: str | None
    agent_tls_key: str | None
    agent_tls_ca: str | None
    agent_tls_server_name: str | None
    insecure_agents: bool
    metrics_port: int
    health_port: int
    peering: str
    standalone: bool
    priority: int
    resync_seconds: float
    workers: int
    checkpoint_retention: str
    orphan_sweep_seconds: float
    orphan_grace_seconds: float
    webhook_port: int
    webhook_cert: str | None
    webhook_key: str | None
    webhook_ca: str | None
    max_migrations_per_node: int
    log_level: str
    log_format: str
    self_check: bool


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lpm-controller",
        description="LPM controller: reconciles PodMigration, PodCheckpoint and ContainerCheckpoint objects, "
        "driving the checkpoint agents on the nodes.",
    )
    add_flag(p, "--kubeconfig", "KUBECONFIG", help="kubeconfig file; in-cluster config when unset.")
    add_flag(p, "--namespace", "LPM_WATCH_NAMESPACE", help="Watch one namespace; all namespaces when unset.")
    add_flag(
        p,
        "--agent-namespace",
        "LPM_AGENT_NAMESPACE",
        default="lpm-system",
        help="Namespace of the agent DaemonSet's pods.",
    )
    tls = p.add_argument_group("agent client TLS")
    add_flag(tls, "--agent-tls-cert", "LPM_AGENT_CLIENT_CERT", help="Client certificate for agents (mTLS).")
    add_flag(tls, "--agent-tls-key", "LPM_AGENT_CLIENT_KEY", help="Its key.")
    add_flag(tls, "--agent-tls-ca", "LPM_AGENT_CA", help="CA that signed the agents' serving certificates.")
    add_flag(
        tls,
        "--agent-tls-server-name",
        "LPM_AGENT_TLS_SERVER_NAME",
        help="Name to verify in the agents' serving certificates; their address when unset.",
    )
    add_switch(tls, "--insecure-agents", "LPM_INSECURE_AGENTS", help="Talk plaintext gRPC to agents (tests only).")
    add_flag(p, "--metrics-port", "LPM_METRICS_PORT", type=int, default=8080, help="Prometheus metrics port.")
    add_flag(p, "--health-port", "LPM_HEALTH_PORT", type=int, default=8081, help="Liveness/readiness port.")
    add_flag(
        p,
        "--peering",
        "LPM_PEERING",
        default="lpm-controller",
        help="Peering (leader election) object name; replicas sharing it run one at a time.",
    )
    add_switch(p, "--standalone", "LPM_STANDALONE", help="Run without peering (no leader election; one replica only).")
    add_flag(
        p,
        "--priority",
        "LPM_PEERING_PRIORITY",
        type=int,
        default=0,
        help="Peering priority; the highest-priority replica is active, the others wait. 0 picks a random one.",
    )
    add_flag(
        p,
        "--resync-seconds",
        "LPM_RESYNC_SECONDS",
        type=float,
        default=2.0,
        help="Re-check unfinished objects this often (waiting for pods, agents, children).",
    )
    add_flag(p, "--workers", "LPM_WORKERS", type=int, default=32, help="Reconcile threads (agent calls block one).")
    add_flag(
        p,
        "--checkpoint-retention",
        "LPM_CHECKPOINT_RETENTION",
        type=_retention,
        default="keep=3,maxAge=168h",
        help="Default retention of finished PodCheckpoints and their stored data: keep=N (newest per pod; 0 no "
        "bound), maxAge=DURATION (s, m, h, d; 0 no bound). The annotation lpm.my.domain/checkpoint-retention on a "
        "PodCheckpoint, its pod or its namespace overrides it, in that order.",
    )
    add_flag(
        p,
        "--orphan-sweep-seconds",
        "LPM_ORPHAN_SWEEP_SECONDS",
        type=float,
        default=600.0,
        help="How often to delete stored checkpoints that no PodCheckpoint, ContainerCheckpoint, Content or "
        "PodMigration names (cluster-wide controllers only). 0 disables.",
    )
    add_flag(
        p,
        "--orphan-grace-seconds",
        "LPM_ORPHAN_GRACE_SECONDS",
        type=float,
        default=3600.0,
        help="A stored checkpoint is deleted only after it was named by no object for this long.",
    )
    hooks = p.add_argument_group(
        "admission webhooks",
        "Owned pods that opted in (label lpm.my.domain/migratable=true): the owner's replacement pod becomes the "
        "restore target (MutatingWebhookConfiguration lpm-replacement), and their evictions, as by kubectl drain, "
        "become migrations (ValidatingWebhookConfiguration lpm-eviction). Off without a certificate.",
    )
    add_flag(hooks, "--webhook-port", "LPM_WEBHOOK_PORT", type=int, default=9443, help="HTTPS port (0: off).")
    add_flag(hooks, "--webhook-cert", "LPM_WEBHOOK_CERT", help="Serving certificate (PEM).")
    add_flag(hooks, "--webhook-key", "LPM_WEBHOOK_KEY", help="Its private key (PEM).")
    add_flag(
        hooks,
        "--webhook-ca",
        "LPM_WEBHOOK_CA",
        help="CA that signed the certificate: written into the two webhook configurations' caBundle at start.",
    )
    add_flag(
        hooks,
        "--max-migrations-per-node",
        "LPM_MAX_MIGRATIONS_PER_NODE",
        type=int,
        default=2,
        help="At most this many migrations started by evictions leave one node at once; further evictions are "
        "answered 429 (kubectl drain retries them).",
    )
    add_logging_flags(p)
    p.add_argument("--self-check", action="store_true", help="Check configuration, then exit.")
    return p


def _retention(text: str) -> str:
    from lpm.controller.retention import RetentionPolicy

    try:
        RetentionPolicy.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def parse(argv: list[str] | None = None) -> ControllerConfig:
    return ControllerConfig(**vars(build_parser().parse_args(argv)))
