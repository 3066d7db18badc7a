"""The agent's configuration: flags with environment fallbacks (the DaemonSet sets the environment)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from lpm.api.constants import AGENT_PORT
from lpm.app.flags import add_flag, add_switch
from lpm.app.logs import add_logging_flags


@dataclass(frozen=True)
class AgentConfig:
    listen: str
    node_name: str
    storage: str
    encryption_keys: str
    kubelet_url: str
    kubelet_client_cert: str
    kubelet_client_key: str
    kubelet_ca: str
    tls_cert: str | None
    tls_key: str | None
    tls_client_ca: str | None
    insecure: bool
    max_concurrent: int
    zstd_level: int
    checkpoint_timeout: float
    freeze_deadline: float
    cgroup_root: str
    containerd_address: str
    kubelet_checkpoint_dir: str
    kubelet_node_checkpoint_dir: str
    kubelet_retries: int
    kubelet_backoff_initial: float
    kubelet_backoff_factor: float
    state_dir: str
    work_dir: str
    runtime: str
    freeze_method: str
    ctr: str
    podman: str
    criu: str
    zstd_threads: int
    queue_timeout: float
    shutdown_grace: float
    metrics_port: int
    runtime_task_dir: str
    runtime_node_task_dir: str
    runtime_state_dir: str
    proc_root: str
    restore_handoff_dir: str
    dump_dir: str
    memory_dir: str
    criu_tls_dir: str
    page_server_address: str
    log_level: str
    log_format: str
    self_check: bool
    export_checkpoint: str


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lpm-agent",
        description="LPM checkpoint agent: checkpoints containers through the kubelet, stores the archives in "
        "shared storage, turns them into checkpoint images on the target node, and freezes/thaws sources.",
    )
    add_flag(p, "--listen", "LPM_AGENT_LISTEN", default=f"0.0.0.0:{AGENT_PORT}", help="gRPC listen address.")
    add_flag(p, "--node-name", "NODE_NAME", default="", help="This node's name (downward API spec.nodeName).")
    add_flag(
        p,
        "--storage",
        "LPM_STORAGE",
        default="/mnt/checkpoints",
        help="Checkpoint repository: a mounted path or nfs://host[:port]/export.",
    )
    add_flag(
        p,
        "--encryption-keys",
        "LPM_ENCRYPTION_KEYS",
        default="",
        help="Directory of key-encryption keys (the mounted lpm-checkpoint-keys Secret): one file per key, named "
        "by its ID, holding 32 bytes or their base64, and a file 'active' naming the key new checkpoints are "
        "sealed with (AES-256-GCM). Re-read at every checkpoint, so rotating the Secret needs no restart. "
        "Empty: checkpoints are stored unencrypted.",
    )
    add_flag(p, "--kubelet-url", "LPM_KUBELET_URL", default="https://127.0.0.1:10250", help="This node's kubelet.")
    tls = p.add_argument_group("kubelet client TLS")
    add_flag(
        tls,
        "--kubelet-client-cert",
        "LPM_KUBELET_CLIENT_CERT",
        default="/etc/kubernetes/pki/apiserver-kubelet-client.crt",
        help="Client certificate for the kubelet.",
    )
    add_flag(
        tls,
        "--kubelet-client-key",
        "LPM_KUBELET_CLIENT_KEY",
        default="/etc/kubernetes/pki/apiserver-kubelet-client.key",
        help="Its key.",
    )
    add_flag(
        tls,
        "--kubelet-ca",
        "LPM_KUBELET_CA",
        default="/etc/kubernetes/pki/ca.crt",
        help="CA that signed the kubelet's serving certificate.",
    )
    srv = p.add_argument_group("gRPC server TLS")
    add_flag(srv, "--tls-cert", "LPM_AGENT_TLS_CERT", help="Serving certificate.")
    add_flag(srv, "--tls-key", "LPM_AGENT_TLS_KEY", help="Serving key.")
    add_flag(
        srv,
        "--tls-client-ca",
        "LPM_AGENT_TLS_CLIENT_CA",
        help="CA for client certificates; when set, clients must present one (mutual TLS).",
    )
    add_switch(srv, "--insecure", "LPM_AGENT_INSECURE", help="Serve plaintext gRPC (tests only).")
    add_flag(
        p,
        "--max-concurrent",
        "LPM_AGENT_MAX_CONCURRENT",
        type=int,
        default=4,
        help="Checkpoints and conversions running at once.",
    )
    add_flag(p, "--zstd-level", "LPM_ZSTD_LEVEL", type=int, default=3, help="Default zstd level.")
    add_flag(
        p,
        "--checkpoint-timeout",
        "LPM_CHECKPOINT_TIMEOUT",
        type=float,
        default=120.0,
        help="Seconds allowed for one checkpoint, kubelet retries included.",
    )
    add_flag(
        p,
        "--freeze-deadline",
        "LPM_FREEZE_DEADLINE",
        type=float,
        default=300.0,
        help="Seconds after which a frozen container nobody thawed or renewed is thawed.",
    )
    add_flag(p, "--cgroup-root", "LPM_CGROUP_ROOT", default="/sys/fs/cgroup", help="Where cgroups are mounted.")
    add_flag(
        p,
        "--containerd-address",
        "LPM_CONTAINERD_ADDRESS",
        default="/run/containerd/containerd.sock",
        help="containerd socket, for loading checkpoint images.",
    )
    kub = p.add_argument_group("kubelet checkpoints")
    add_flag(
        kub,
        "--kubelet-checkpoint-dir",
        "LPM_KUBELET_CHECKPOINT_DIR",
        default="/var/lib/kubelet/checkpoints",
        help="Where this agent sees the kubelet's checkpoint directory (a hostPath mount).",
    )
    add_flag(
        kub,
        "--kubelet-node-checkpoint-dir",
        "LPM_KUBELET_NODE_CHECKPOINT_DIR",
        default="/var/lib/kubelet/checkpoints",
        help="The same directory as the kubelet names it on the node (the prefix of the paths it returns).",
    )
    add_flag(
        kub,
        "--kubelet-retries",
        "LPM_KUBELET_RETRIES",
        type=int,
        default=5,
        help="Retries of a kubelet call after connection errors or 5xx (never 4xx).",
    )
    add_flag(
        kub,
        "--kubelet-backoff-initial",
        "LPM_KUBELET_BACKOFF_INITIAL",
        type=float,
        default=2.0,
        help="Seconds before the first retry.",
    )
    add_flag(
        kub,
        "--kubelet-backoff-factor",
        "LPM_KUBELET_BACKOFF_FACTOR",
        type=float,
        default=2.0,
        help="Each further retry waits this many times longer.",
    )
    add_flag(
        p,
        "--state-dir",
        "LPM_AGENT_STATE_DIR",
        default="/var/lib/lpm-agent",
        help="Freeze records (auto-thaw deadlines survive an agent restart).",
    )
    add_flag(p, "--work-dir", "LPM_AGENT_WORK_DIR", default="", help="Scratch space for image archives [tmp].")
    add_flag(
        p,
        "--runtime",
        "LPM_RUNTIME",
        default="containerd",
        choices=["containerd", "podman"],
        help="Image store checkpoint images are loaded into (podman = containers-storage, shared with CRI-O).",
    )
    add_flag(
        p,
        "--freeze-method",
        "LPM_FREEZE_METHOD",
        default="auto",
        choices=["auto", "containerd", "cgroup"],
        help="How sources are frozen: containerd task pause (its checkpoint then keeps them paused), or the raw "
        "cgroup freezer (plain runc). auto: containerd when --runtime is containerd, else cgroup.",
    )
    add_flag(p, "--ctr", "LPM_CTR", default="ctr", help="containerd's ctr binary.")
    add_flag(p, "--podman", "LPM_PODMAN", default="podman", help="podman binary.")
    add_flag(p, "--criu", "LPM_CRIU", default="criu", help="criu binary (version reporting only).")
    add_flag(p, "--zstd-threads", "LPM_ZSTD_THREADS", type=int, default=0, help="zstd worker threads (0: one per CPU).")
    add_flag(
        p,
        "--queue-timeout",
        "LPM_AGENT_QUEUE_TIMEOUT",
        type=float,
        default=30.0,
        help="Seconds a checkpoint/conversion waits for a slot before RESOURCE_EXHAUSTED.",
    )
    add_flag(
        p,
        "--shutdown-grace",
        "LPM_AGENT_SHUTDOWN_GRACE",
        type=float,
        default=30.0,
        help="Seconds running calls get to finish after SIGTERM.",
    )
    add_flag(
        p,
        "--metrics-port",
        "LPM_AGENT_METRICS_PORT",
        type=int,
        default=0,
        help="Serve Prometheus metrics (rpc counts and durations by method and status) on this port; 0: off.",
    )
    why = p.add_argument_group("reading why CRIU failed, and what would make it fail")
    add_flag(
        why,
        "--runtime-task-dir",
        "LPM_RUNTIME_TASK_DIR",
        default="/run/containerd/io.containerd.runtime.v2.task",
        help="Where this agent sees the runtime's task directory (read-only mount), to read CRIU's log of a failed "
        "dump; only logs inside it are ever opened.",
    )
    add_flag(
        why,
        "--runtime-node-task-dir",
        "LPM_RUNTIME_NODE_TASK_DIR",
        default="/run/containerd/io.containerd.runtime.v2.task",
        help="The same directory as the runtime names it on the node (the prefix of the log paths it reports).",
    )
    add_flag(
        why,
        "--runtime-state-dir",
        "LPM_RUNTIME_STATE_DIR",
        default="/var/lib/containerd/io.containerd.runtime.v2.task",
        help="Where this agent sees the runtime's per-task state (read-only), where CRIU writes restore.log: "
        "the log of a failed restore is kept from there after the runtime deletes it.",
    )
    add_flag(
        why,
        "--proc-root",
        "LPM_PROC_ROOT",
        default="/proc",
        help="The node's procfs (the host's /proc, read-only), to see a source's connections and open files "
        "before anything is frozen.",
    )
    add_flag(
        why,
        "--restore-handoff-dir",
        "LPM_RESTORE_HANDOFF_DIR",
        default="/var/lib/lpm/restore",
        help="Live engine: the node directory this agent stages checkpoints in for lpm-runc (the runtime "
        "wrapper behind RuntimeClass lpm), mounted at the same path as on the node. Empty: no live restores here.",
    )
    add_flag(
        why,
        "--dump-dir",
        "LPM_DUMP_DIR",
        default="/var/lib/lpm/dump",
        help="Live engine, containerd only: the node directory containerd writes CRIU's images into when this "
        "agent dumps a source itself (containerd's Tasks.Checkpoint) instead of through the kubelet, mounted at "
        "the same path as on the node; the containers' overlay upper directories must be readable at their node "
        "paths too. Empty: always dump through the kubelet.",
    )
    add_flag(
        why,
        "--memory-dir",
        "LPM_MEMORY_DIR",
        default="/run/lpm",
        help="Live engine: a memory-backed (tmpfs) node directory, mounted at the same path as on the node, where "
        "a checkpoint waits instead of --dump-dir (source) and --restore-handoff-dir (target) when it fits with a "
        "quarter of the tmpfs to spare: faster (no disk writes inside the freeze) and no process memory on the "
        "node's disk. Empty: disk only.",
    )
    add_flag(
        why,
        "--criu-tls-dir",
        "LPM_CRIU_TLS_DIR",
        default="/var/lib/lpm/tls",
        help="Post-copy: the node directory (mounted at the same path) this agent copies its TLS certificate, key "
        "and CA into, 0700/0600, for CRIU's page server and `criu lazy-pages` (the node's /etc/criu/runc.conf names "
        "it too). Empty, or --insecure: no post-copy on this node.",
    )
    add_flag(
        why,
        "--page-server-address",
        "LPM_PAGE_SERVER_ADDRESS",
        default="",
        help="Post-copy, source side: the node address CRIU's page server listens on (the node's IP; the agent runs "
        "with hostNetwork). Empty: no post-copy from this node.",
    )
    add_logging_flags(p)
    p.add_argument("--self-check", action="store_true", help="Check configuration and local tools, then exit.")
    p.add_argument(
        "--export-checkpoint",
        metavar="ARTIFACT_URI",
        default="",
        help="Write one stored container checkpoint to stdout as the runtime made it (decrypted, decompressed, "
        "verified: a tar that checkpointctl reads), then exit. For forensics, from the agent pod: kubectl -n "
        "lpm-system exec ds/lpm-agent -- /opt/lpm/venv/pex --export-checkpoint URI > checkpoint.tar. The file "
        "holds the container's memory in the clear: keep it private.",
    )
    return p


def parse(argv: list[str] | None = None) -> AgentConfig:
    ns = build_parser().parse_args(argv)
    return AgentConfig(**vars(ns))
