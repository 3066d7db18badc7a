"""Test harness around a real API server: Nodes and Pods as API objects, a stand-in kubelet that marks
restored pods Running, agent doubles registered as agent pods, and the real controller as a subprocess
(so a test can kill -9 it and start it again)."""

from __future__ import annotations

import functools
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from integration.controller import agent_double
from kubernetes import client

AGENT_NAMESPACE = "lpm-system"
RESTORED = "lpm.my.domain/restored"


def core(api: Any) -> client.CoreV1Api:
    return client.CoreV1Api(api)


def custom(api: Any) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api)


def ensure_namespace(api: Any, name: str) -> None:
    try:
        core(api).create_namespace({"metadata": {"name": name}})
    except client.exceptions.ApiException as exc:
        if exc.status != 409:
            raise


def make_node(api: Any, name: str, ready: bool = True, unschedulable: bool = False) -> None:
    v1 = core(api)
    try:
        v1.create_node({"metadata": {"name": name}, "spec": {"unschedulable": unschedulable}})
    except client.exceptions.ApiException as exc:
        if exc.status != 409:
            raise
    v1.patch_node_status(
        name,
        {
            "status": {
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "True" if ready else "False",
                        "reason": "KubeletReady" if ready else "KubeletNotReady",
                        "message": "kubelet is posting ready status" if ready else "container runtime is down",
                        "lastHeartbeatTime": None,
                    }
                ]
            }
        },
    )


def set_pod_running(api: Any, namespace: str, name: str, ip: str = "10.0.0.1") -> None:
    pod = core(api).read_namespaced_pod(name, namespace)
    statuses = [
        {
            "name": c.name,
            "ready": True,
            "restartCount": 0,
            "image": c.image,
            "imageID": "",
            "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}},
        }
        for c in pod.spec.containers
    ]
    core(api).patch_namespaced_pod_status(
        name, namespace, {"status": {"phase": "Running", "podIP": ip, "hostIP": ip, "containerStatuses": statuses}}
    )


def make_pod(
    api: Any,
    namespace: str,
    name: str,
    node: str,
    containers: tuple[str, ...] = ("app",),
    owner: dict[str, Any] | None = None,
    running: bool = True,
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "labels": {"app": name}}
    if owner:
        meta["ownerReferences"] = [owner]
    body = {
        "metadata": meta,
        "spec": {
            "nodeName": node,
            "containers": [{"name": c, "image": f"registry.local/{c}:1"} for c in containers],
        },
    }
    core(api).create_namespaced_pod(namespace, body)
    if running:
        set_pod_running(api, namespace, name)
    return dict(core(api).read_namespaced_pod(name, namespace).to_dict())


def migration(name: str, pod: str, target: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "lpm.my.domain/v1",
        "kind": "PodMigration",
        "metadata": {"name": name},
        "spec": {"podName": pod, "targetNode": target, **spec},
    }


def create_migration(api: Any, namespace: str, name: str, pod: str, target: str, **spec: Any) -> dict[str, Any]:
    return dict(
        custom(api).create_namespaced_custom_object(
            "lpm.my.domain", "v1", namespace, "podmigrations", migration(name, pod, target, **spec)
        )
    )


def get_cr(api: Any, namespace: str, plural: str, name: str) -> dict[str, Any] | None:
    try:
        return dict(custom(api).get_namespaced_custom_object("lpm.my.domain", "v1", namespace, plural, name))
    except client.exceptions.ApiException as exc:
        if exc.status == 404:
            return None
        raise


def phase_of(api: Any, namespace: str, name: str) -> str | None:
    obj = get_cr(api, namespace, "podmigrations", name)
    return None if obj is None else (obj.get("status") or {}).get("phase")


def wait_phase(api: Any, namespace: str, name: str, phases: set[str], timeout: float = 90.0) -> dict[str, Any]:
    agent_double.wait_for(
        f"PodMigration {namespace}/{name} in {phases}",
        lambda: phase_of(api, namespace, name) in phases,
        timeout=timeout,
    )
    obj = get_cr(api, namespace, "podmigrations", name)
    assert obj is not None
    return obj


@dataclass
class FakeKubelet:
    """Marks restored pods Running (or stuck, per `behaviour`), like a kubelet on the target node would."""

    api: Any
    behaviour: dict[str, str] = field(default_factory=dict)  # namespace -> "run" | "crash" | "hang"
    interval: float = 0.3
    writes: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> FakeKubelet:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        v1 = core(self.api)
        while not self._stop.is_set():
            try:
                pods = v1.list_pod_for_all_namespaces(label_selector=f"{RESTORED}=true").items
                for pod in pods:
                    mode = self.behaviour.get(pod.metadata.namespace, "run")
                    if pod.status.phase not in (None, "Pending") or pod.metadata.deletion_timestamp:
                        continue
                    if mode == "run":
                        set_pod_running(self.api, pod.metadata.namespace, pod.metadata.name, ip="10.0.0.2")
                        self.writes += 1
                    elif mode == "crash":
                        v1.patch_namespaced_pod_status(
                            pod.metadata.name,
                            pod.metadata.namespace,
                            {
                                "status": {
                                    "phase": "Running",
                                    "containerStatuses": [
                                        {
                                            "name": c.name,
                                            "ready": False,
                                            "restartCount": 3,
                                            "image": c.image,
                                            "imageID": "",
                                            "state": {
                                                "waiting": {
                                                    "reason": "CrashLoopBackOff",
                                                    "message": "restore failed: criu exited 1",
                                                }
                                            },
                                        }
                                        for c in pod.spec.containers
                                    ],
                                }
                            },
                        )
            except Exception:  # - the stand-in kubelet must keep going
                pass
            self._stop.wait(self.interval)


def register_agents(api: Any, nodes: list[str], delay: float = 0.0) -> dict[str, agent_double.AgentDouble]:
    ensure_namespace(api, AGENT_NAMESPACE)
    doubles = {}
    for node in nodes:
        double = agent_double.serve(node, delay=delay)
        doubles[node] = double
        name = f"lpm-agent-{node}"
        try:
            core(api).delete_namespaced_pod(name, AGENT_NAMESPACE, grace_period_seconds=0)
            agent_double.wait_for("old agent pod gone", functools.partial(_absent, api, name), timeout=20)
        except client.exceptions.ApiException:
            pass
        core(api).create_namespaced_pod(AGENT_NAMESPACE, agent_double.agent_pod(node, double.port, AGENT_NAMESPACE))
        core(api).patch_namespaced_pod_status(
            name, AGENT_NAMESPACE, {"status": {"phase": "Running", "podIP": "127.0.0.1", "hostIP": "127.0.0.1"}}
        )
    return doubles


def _absent(api: Any, name: str) -> bool:
    try:
        core(api).read_namespaced_pod(name, AGENT_NAMESPACE)
        return False
    except client.exceptions.ApiException as exc:
        return exc.status == 404


@dataclass
class ControllerProcess:
    """The real controller (`python -m lpm.controller.main`) against the test API server."""

    kubeconfig: Path
    log_path: Path
    extra: tuple[str, ...] = ()
    proc: subprocess.Popen[bytes] | None = None
    metrics_port: int = field(default_factory=lambda: _free_port())

    def start(self) -> ControllerProcess:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        env.pop("KUBECONFIG", None)
        env["PYTHONWARNINGS"] = "ignore"  # the test API server's self-signed certificate is not verified
        argv = [
            sys.executable,
            "-m",
            "lpm.controller.main",
            f"--kubeconfig={self.kubeconfig}",
            f"--agent-namespace={AGENT_NAMESPACE}",
            "--insecure-agents",
            "--standalone",
            f"--metrics-port={self.metrics_port}",
            "--health-port=0",
            "--resync-seconds=1",
            *self.extra,
        ]
        self.proc = subprocess.Popen(
            argv, env=env, stdout=self.log_path.open("ab"), stderr=subprocess.STDOUT, start_new_session=True
        )
        time.sleep(0.5)
        if self.proc.poll() is not None:
            raise RuntimeError(f"controller exited at once:\n{self.log_path.read_text()[-3000:]}")
        return self

    def metric(self, name: str, **labels: str) -> float:
        """A sample from the controller's Prometheus endpoint (0 when absent)."""
        from prometheus_client.parser import text_string_to_metric_families

        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as resp:
            text = resp.read().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    return float(sample.value)
        return 0.0

    def kill(self) -> None:
        """SIGKILL: no cleanup, no finalizer work: the hardest restart."""
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()

    def peak_rss_kib(self) -> int:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        return 0


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def wait(check: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
    return agent_double.wait_for(what, check, timeout=timeout)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
