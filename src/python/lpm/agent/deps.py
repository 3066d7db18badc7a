"""What the agent works with (`Deps`), and its production wiring from the flags (`build_deps`)."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from lpm.agent import criu_log, kernel, transfer
from lpm.agent import dump as dp
from lpm.agent import freezer as fz
from lpm.agent import handoff as ho
from lpm.agent.config import AgentConfig
from lpm.agent.images import ImageError, ImageLoader
from lpm.agent.kubelet import (
    Backoff,
    KubeletClient,
)
from lpm.agent.pages import CriuTLS
from lpm.agent.progress import Progress
from lpm.agent.restore_logs import RestoreLogWatcher
from lpm.storage.sealing import KeyDirectory
from lpm.storage.store import CheckpointStore, open_backend

log = logging.getLogger(__name__)


def _tool_version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""
    for line in out.splitlines():
        if line.startswith("Version:"):
            return line.split(":", 1)[1].strip()
    return out.strip().splitlines()[0] if out.strip() else ""


@dataclass
class Deps:
    """What the service works with; tests build it with doubles for the timing and the locator."""

    node_name: str
    store: CheckpointStore
    kubelet: KubeletClient
    freezer: fz.Freezer
    images: ImageLoader
    max_concurrent: int = 4
    queue_timeout: float = 30.0
    checkpoint_timeout: float = 120.0
    zstd_level: int = 3
    zstd_threads: int = 0
    criu_version: str = ""
    runtime_version: str = ""
    cgroup_root: Path = Path("/sys/fs/cgroup")
    # Where CRIU's logs of failed dumps are: (the runtime's task dir as the node names it, where we see it).
    runtime_node_task_dir: str = criu_log.CONTAINERD_TASK_DIR
    runtime_task_dir: Path = Path(criu_log.CONTAINERD_TASK_DIR)
    proc_root: Path = Path("/proc")
    # Keeps CRIU's restore logs after the runtime deletes them (None: not kept).
    restore_logs: RestoreLogWatcher | None = None
    # The live engine's node-local hand-off with lpm-runc (None: this agent cannot stage live restores).
    handoff: ho.Handoff | None = None
    # This agent's certificate as a client of its peers (pushing checkpoints node to node).
    peer_tls: transfer.PeerTLS = field(default_factory=transfer.PeerTLS)
    # The Live engine's dump through containerd (None: every dump goes through the kubelet).
    dumper: dp.RuntimeDumper | None = None
    # What each checkpoint is doing now (GetProgress).
    progress: Progress = field(default_factory=Progress)
    # Why pre-copy cannot run on this node ("": the kernel tracks dirty pages); probed once at start.
    dirty_tracking_problem: str = "not probed"
    # Why this node cannot take part in post-copy ("": it can); probed once at start.
    lazy_pages_problem: str = "not probed"
    # Post-copy: the agent's TLS files where CRIU on the node reads them (None: no post-copy here).
    criu_tls: CriuTLS | None = None


def build_deps(cfg: AgentConfig, locate: fz.Locate | None = None, backoff: Backoff | None = None) -> Deps:
    """Production wiring from flags; `locate` and `backoff` are the seams tests use."""
    keys = None
    if cfg.encryption_keys:
        keys = KeyDirectory(Path(cfg.encryption_keys))
        ring = keys.ring()  # refuse to start with keys that do not load, rather than fail every checkpoint
        log.info("checkpoints are encrypted with key %r (%d key(s) held)", ring.active, len(ring.keys))
    store = CheckpointStore(open_backend(cfg.storage), cfg.node_name, keys)
    kubelet = KubeletClient(
        cfg.kubelet_url,
        client_cert=cfg.kubelet_client_cert or None,
        client_key=cfg.kubelet_client_key or None,
        ca=cfg.kubelet_ca or None,
        checkpoint_dir=cfg.kubelet_checkpoint_dir,
        node_checkpoint_dir=cfg.kubelet_node_checkpoint_dir,
        backoff=backoff
        or Backoff(retries=cfg.kubelet_retries, initial=cfg.kubelet_backoff_initial, factor=cfg.kubelet_backoff_factor),
    )
    cgroup_root = Path(cfg.cgroup_root)
    memory = Path(cfg.memory_dir) if cfg.memory_dir else None
    method = (
        cfg.freeze_method
        if cfg.freeze_method != "auto"
        else ("containerd" if cfg.runtime == "containerd" else "cgroup")
    )
    control: fz.Control
    if method == "containerd":
        control = fz.ContainerdControl(address=cfg.containerd_address, ctr=cfg.ctr, cgroup_root=Path(cfg.cgroup_root))
        default_locate = fz.kubelet_container_ids(kubelet.pods)
    else:
        control = fz.CgroupControl()
        default_locate = fz.kubelet_locator(kubelet.pods, cgroup_root)
    freezer = fz.Freezer(locate or default_locate, Path(cfg.state_dir), cfg.freeze_deadline, control)
    images = ImageLoader(
        runtime=cfg.runtime,
        containerd_address=cfg.containerd_address,
        ctr=cfg.ctr,
        podman=cfg.podman,
        work_dir=cfg.work_dir,
    )
    try:
        runtime_version = images.version()
    except ImageError as exc:
        log.warning("runtime version unknown: %s", exc)
        runtime_version = ""
    criu = shutil.which(cfg.criu)
    return Deps(
        node_name=cfg.node_name or os.uname().nodename,
        store=store,
        kubelet=kubelet,
        freezer=freezer,
        images=images,
        max_concurrent=cfg.max_concurrent,
        queue_timeout=cfg.queue_timeout,
        checkpoint_timeout=cfg.checkpoint_timeout,
        zstd_level=cfg.zstd_level,
        zstd_threads=cfg.zstd_threads,
        criu_version=_tool_version([criu, "--version"]) if criu else "",
        dirty_tracking_problem=_dirty_tracking(),
        lazy_pages_problem=_lazy_pages(cfg),
        criu_tls=(
            CriuTLS(Path(cfg.criu_tls_dir), cfg.tls_cert, cfg.tls_key, cfg.tls_client_ca)
            if cfg.criu_tls_dir and not cfg.insecure and cfg.tls_cert and cfg.tls_key and cfg.tls_client_ca
            else None
        ),
        runtime_version=runtime_version,
        cgroup_root=cgroup_root,
        runtime_node_task_dir=cfg.runtime_node_task_dir,
        runtime_task_dir=Path(cfg.runtime_task_dir),
        proc_root=Path(cfg.proc_root),
        restore_logs=RestoreLogWatcher(Path(cfg.runtime_state_dir), bundle_dir=Path(cfg.runtime_task_dir)),
        handoff=(
            ho.Handoff(Path(cfg.restore_handoff_dir), memory / "restore" if memory else None)
            if cfg.restore_handoff_dir
            else None
        ),
        dumper=(
            dp.RuntimeDumper(
                Path(cfg.dump_dir),
                Path(cfg.proc_root),
                address=cfg.containerd_address,
                ctr=cfg.ctr,
                task_dir=Path(cfg.runtime_task_dir) if cfg.runtime_task_dir else None,
                memory_dir=memory / "dump" if memory else None,
                page_server_host=cfg.page_server_address or None,
            )
            if cfg.dump_dir and method == "containerd"
            else None
        ),
        peer_tls=(
            transfer.PeerTLS(None, None, None)
            if cfg.insecure
            else transfer.PeerTLS(cfg.tls_cert, cfg.tls_key, cfg.tls_client_ca)
        ),
    )


def _dirty_tracking() -> str:
    problem = kernel.dirty_tracking_problem()
    log.info("pre-copy: %s", problem or "the kernel tracks dirty pages")
    return problem


def _lazy_pages(cfg: AgentConfig) -> str:
    problem = kernel.lazy_pages_problem()
    if not problem and (cfg.insecure or not cfg.criu_tls_dir):
        problem = "the agent has no TLS certificates for CRIU's page stream (--insecure or no --criu-tls-dir)"
    if not problem and not cfg.page_server_address:
        problem = "no --page-server-address (the node's IP) for CRIU's page server"
    log.info("post-copy: %s", problem or "the kernel has userfaultfd and 4 MiB pipes; CRIU gets the agent's TLS")
    return problem
