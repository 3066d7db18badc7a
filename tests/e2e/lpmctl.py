"""Drives the real local cluster for the end-to-end tests: kubectl, kubectl-lpm, the cluster script, and reading
the analytics counter's state from its log."""

from __future__ import annotations

import copy
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path.cwd()  # the Pants sandbox: infra/local, deploy/ and the packaged binaries are here
CLUSTER = ROOT / "infra" / "local" / "cluster"
# Packaged by Pants: in the test sandbox as a runtime package, in dist/ for `./pants run` (benchmarks).
KUBECTL_LPM = next(
    (p for p in (ROOT / "kubectl-lpm", ROOT / "dist" / "kubectl-lpm") if p.exists()), ROOT / "kubectl-lpm"
)
NODE_1 = "lpm-node-1"
NODE_2 = "lpm-node-2"
NAMESPACE = "lpm-e2e"
IMAGE_VERSION = "0.1.0"
DEMO_IMAGE = f"localhost/lpm/analytics-counter:{IMAGE_VERSION}"


def cluster(*args: str) -> str:
    return subprocess.run([sys.executable, str(CLUSTER), *args], check=True, capture_output=True, text=True).stdout


def env() -> dict[str, str]:
    out = dict(os.environ)
    for line in cluster("env").splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        out[key] = value.replace("$PATH", os.environ.get("PATH", ""))
    return out


ENV: dict[str, str] = {}


def kubectl(*args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(["kubectl", *args], env=ENV, capture_output=True, text=True, input=input)
    if check and res.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed ({res.returncode}): {res.stderr.strip()}")
    return res


def kubectl_json(*args: str) -> Any:
    return json.loads(kubectl(*args, "-o", "json").stdout)


def lpm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(KUBECTL_LPM), "-n", NAMESPACE, *args], env=ENV, capture_output=True, text=True)


def wait_for(what: str, probe: Any, timeout: float = 120, interval: float = 0.5, explain: Any = None) -> Any:
    """`probe()` once it is truthy; an AssertionError after `timeout`, with what `explain()` says (the state
    that would tell why) when given."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    why = f"\n{explain()}" if explain else ""
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r}){why}")


def counter_pod(
    name: str,
    node: str,
    containers: tuple[str, ...] = ("counter",),
    ballast_mib: int = 0,
    extra_args: tuple[str, ...] = (),
    empty_dir: str | None = None,
    runtime_class: str | None = None,
) -> dict:
    """The analytics counter as a bare pod; `empty_dir` mounts an emptyDir volume named `data` there."""
    mounts = [{"name": "data", "mountPath": empty_dir}] if empty_dir else []
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"app.kubernetes.io/name": "lpm-e2e"}},
        "spec": {
            "nodeName": node,
            "dnsPolicy": "Default",
            "enableServiceLinks": False,
            "automountServiceAccountToken": False,
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {
                    "name": c,
                    "image": DEMO_IMAGE,
                    "imagePullPolicy": "Never",
                    "command": ["/opt/demo/venv/pex"],
                    "args": [
                        "--interval",
                        "0.1",
                        "--ballast-mib",
                        str(ballast_mib),
                        "--verify-every",
                        "20",
                        *extra_args,
                    ],
                    "volumeMounts": mounts,
                }
                for c in containers
            ],
        },
    }
    if empty_dir:
        pod["spec"]["volumes"] = [{"name": "data", "emptyDir": {}}]  # type: ignore[index]
    if runtime_class:
        pod["spec"]["runtimeClassName"] = runtime_class  # type: ignore[index]
    return pod


def bare_pod(name: str, node: str, containers: list[dict]) -> dict:
    """A pod pinned to `node`, labelled app.kubernetes.io/name=<name> (what a Service in front selects)."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"app.kubernetes.io/name": name}},
        "spec": {
            "nodeName": node,
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "terminationGracePeriodSeconds": 1,
            "containers": containers,
        },
    }


def apply(*objs: dict) -> None:
    kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objs)}))


def start_counter(name: str, node: str = NODE_1, **kw: Any) -> None:
    kubectl("apply", "-f", "-", input=json.dumps(counter_pod(name, node, **kw)))
    wait_for(f"pod {name} Ready", lambda: pod_ready(name), timeout=120)
    wait_for(
        f"pod {name} counting",
        lambda: (states(name, kw.get("containers", ("counter",))[0]) or [{}])[-1].get("seq", 0) >= 10,
        timeout=60,
    )


def pod_ready(name: str) -> bool:
    res = kubectl("-n", NAMESPACE, "get", "pod", name, "-o", "json", check=False)
    if res.returncode != 0:
        return False
    pod = json.loads(res.stdout)
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod.get("status", {}).get("conditions", []))


def states(pod: str, container: str = "counter") -> list[dict[str, Any]]:
    """Every state line the container printed (a restored container's log starts with the source's lines)."""
    res = kubectl("-n", NAMESPACE, "logs", pod, "-c", container, check=False)
    out = []
    for line in res.stdout.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


class Follow:
    """Every state line a container prints until its pod goes (`kubectl logs -f`): the source's last update
    before it was frozen, which a live-engine replacement's own log does not repeat."""

    def __init__(self, pod: str, container: str = "counter") -> None:
        self.proc = subprocess.Popen(
            ["kubectl", "-n", NAMESPACE, "logs", "-f", pod, "-c", container],
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )

    def stop(self) -> None:
        self.proc.kill()
        self.proc.communicate()

    def lines(self, timeout: float = 60) -> list[dict[str, Any]]:
        """Waits for the stream to end (the pod was deleted) and returns what it printed."""
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        found = []
        for line in out.splitlines():
            try:
                found.append(json.loads(line))
            except ValueError:
                continue
        return found


def migration(name: str) -> dict[str, Any]:
    return kubectl_json("-n", NAMESPACE, "get", "podmigration", name)


def phase(name: str) -> str:
    """The migration's phase; "" while it does not exist yet."""
    res = kubectl("-n", NAMESPACE, "get", "podmigration", name, "-o", "json", check=False)
    if res.returncode != 0:
        return ""
    return str(json.loads(res.stdout).get("status", {}).get("phase", ""))


def install_lpm() -> None:
    """Bring the cluster up and install LPM from this checkout's images and manifests (idempotent)."""
    cluster("up")
    ENV.update(env())
    for image in ("controller", "agent", "analytics-counter"):
        cluster("load-image", f"localhost/lpm/{image}:{IMAGE_VERSION}")
    kubectl("apply", "--server-side", "--force-conflicts", "-k", "deploy/kustomize/overlays/local")
    if kubectl("-n", "lpm-system", "get", "secret", "lpm-agent-tls", check=False).returncode != 0:
        secrets = subprocess.run(
            ["bash", "deploy/certs/generate.sh", "-n", "lpm-system"], check=True, capture_output=True, text=True
        ).stdout
        kubectl("apply", "-f", "-", input=secrets)
    if kubectl("-n", "lpm-system", "get", "secret", "lpm-checkpoint-keys", check=False).returncode != 0:
        keys = subprocess.run(
            ["bash", "deploy/keys/checkpoint-keys.sh", "new", "-n", "lpm-system"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        kubectl("apply", "-f", "-", input=keys)
    # The images were just (re)loaded under an unchanged tag: restart so the pods run this checkout's code.
    kubectl("-n", "lpm-system", "rollout", "restart", "deployment/lpm-controller", "daemonset/lpm-agent")
    kubectl("-n", "lpm-system", "rollout", "status", "deployment/lpm-controller", "--timeout=180s")
    kubectl("-n", "lpm-system", "rollout", "status", "daemonset/lpm-agent", "--timeout=180s")
    kubectl("delete", "namespace", NAMESPACE, "--ignore-not-found", "--wait=true", "--timeout=120s")
    kubectl("create", "namespace", NAMESPACE)


def container_ids(pod: str) -> list[str]:
    obj = kubectl_json("-n", NAMESPACE, "get", "pod", pod)
    return [str(c["containerID"]).split("://", 1)[-1] for c in obj["status"].get("containerStatuses") or []]


def task_states(node: str, ids: list[str]) -> dict[str, str]:
    """containerd's own word on each container's task (RUNNING, PAUSED, ...), read inside the node."""
    out = cluster("exec", node, "--", "ctr", "-n", "k8s.io", "tasks", "ls")
    found = {}
    for line in out.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 3 and fields[0] in ids:
            found[fields[0]] = fields[2]
    return found


def longest_pause(lines: list[dict[str, Any]]) -> float:
    """The workload's own view of its longest stop: the largest gap between consecutive state lines."""
    stamps = [float(s["ts"]) for s in lines]
    return max((b - a for a, b in itertools.pairwise(stamps)), default=0.0)


def updates_gap(lines: list[dict[str, Any]], tick: float) -> tuple[float, bool]:
    """A migration's downtime as its workload saw it (the longest pause minus the tick), and whether the sequence
    of updates is intact (none lost or repeated)."""
    seqs = [s["seq"] for s in lines]
    return longest_pause(lines) - tick, seqs == list(range(seqs[0], seqs[0] + len(seqs)))


def agent_on(node: str) -> tuple[str, bool]:
    """(name, Ready) of the lpm-agent pod on `node`; ("", False) when there is none."""
    pods = kubectl_json(
        "-n", "lpm-system", "get", "pods", "-l", "app.kubernetes.io/name=lpm-agent", "--field-selector",
        f"spec.nodeName={node}",
    )["items"]  # fmt: skip
    for pod in pods:
        if not pod["metadata"].get("deletionTimestamp"):
            ready = any(
                c["type"] == "Ready" and c["status"] == "True" for c in pod.get("status", {}).get("conditions", [])
            )
            return pod["metadata"]["name"], ready
    return "", False


# ------------------------------------------------------------------------------ owned workloads
OPT_IN = {"lpm.my.domain/migratable": "true"}


def _template(app: str, opted_in: bool, tick: float = 0.1, ballast_mib: int = 0) -> dict[str, Any]:
    pod = counter_pod("x", NODE_1, ballast_mib=ballast_mib, extra_args=("--interval", str(tick)))
    spec = copy.deepcopy(pod["spec"])
    spec.pop("nodeName")
    labels = {"app": app, **(OPT_IN if opted_in else {})}
    return {"metadata": {"labels": labels}, "spec": spec}


def deployment(name: str, replicas: int, opted_in: bool, tick: float = 0.1, ballast_mib: int = 0) -> dict[str, Any]:
    """The analytics counter as a Deployment (label app=NAME); `opted_in` labels its pods migratable."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": _template(name, opted_in, tick, ballast_mib),
        },
    }


def statefulset(name: str, opted_in: bool = True) -> dict[str, Any]:
    """The analytics counter as a StatefulSet of one (pod NAME-0, label app=NAME)."""
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "replicas": 1,
            "serviceName": name,
            "selector": {"matchLabels": {"app": name}},
            "template": _template(name, opted_in),
        },
    }


def job(name: str) -> dict[str, Any]:
    template = _template(name, True)
    template["spec"]["restartPolicy"] = "Never"
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {"backoffLimit": 0, "template": template},
    }


def pods_of(app: str) -> list[dict[str, Any]]:
    return list(kubectl_json("-n", NAMESPACE, "get", "pods", "-l", f"app={app}")["items"])


def running_on(app: str, node: str, count: int) -> list[dict[str, Any]]:
    def ready() -> list[dict[str, Any]] | None:
        pods = [p for p in pods_of(app) if not p["metadata"].get("deletionTimestamp")]
        ok = [p for p in pods if p["spec"].get("nodeName") == node and pod_ready(p["metadata"]["name"])]
        return ok if len(ok) == count == len(pods) else None

    return list(wait_for(f"{count} pod(s) of {app} Ready on {node}", ready, timeout=240))


def last_seq(pod: str) -> int:
    """The last count the pod printed, 0 before its first (a live-engine replacement's own log starts empty)."""
    return int((states(pod) or [{}])[-1].get("seq", 0))


def controller_off(node: str) -> None:
    """The controller serves the webhooks: if it ran on the drained node, kubectl drain would evict it together
    with the pods it is to move, and with failurePolicy Ignore those would be evicted as usual meanwhile. Moved
    away first, as an operator does (README, owned pods)."""
    selector = "app.kubernetes.io/name=lpm-controller"

    def where() -> list[str]:
        pods = kubectl_json("-n", "lpm-system", "get", "pods", "-l", selector)["items"]
        return [p["spec"].get("nodeName", "") for p in pods if not p["metadata"].get("deletionTimestamp")]

    if node not in where():
        return
    kubectl("cordon", node)
    kubectl("-n", "lpm-system", "delete", "pods", "-l", selector, "--wait=true")
    kubectl("-n", "lpm-system", "rollout", "status", "deployment/lpm-controller", "--timeout=120s")
    assert node not in where()
