"""Debian's Redis on the local cluster, with real clients: for the connection test and benchmark.

`start(name)` runs, on lpm-node-1, a pod with redis-server and two in-pod clients, each on one loopback
connection for its whole life: `inpod` (`redis-cli -r -1 -i 0.02 INCR inpod`, printing every value) and `tick`
(`redis-cli -r -1 -i 0.01 TIME`, the server's clock every 10 ms: the pod's own view of its downtime). A ClusterIP
Service fronts it, and a client pod on lpm-node-2 runs `redis-cli -h <ClusterIP> INCR ext` in a loop (a new
connection each time, as a pooled client reconnects), printing `ok <value> <its clock>` for every
acknowledged write.
"""

from __future__ import annotations

import itertools
import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path

from e2e import lpmctl as k

BUILD = Path(__file__).resolve().parents[2] / "src" / "docker" / "redis" / "build.sh"
OUTSIDE_LOOP = (
    'while true; do if v=$(redis-cli -h "$REDIS" INCR ext 2>&1); then echo "ok $v $(date +%s.%N)"; '
    'else echo "err $(date +%s.%N) $v"; fi; sleep 0.01; done'
)
WAIT_FOR_SERVER = "until redis-cli PING >/dev/null 2>&1; do sleep 0.1; done; exec "


def image() -> str:
    """Build (once; cached by content) and load the image; its tag."""
    built = subprocess.run(["bash", str(BUILD)], capture_output=True, text=True, check=False)
    if built.returncode != 0:
        raise RuntimeError(f"{BUILD} failed: {built.stderr[-2000:]}")
    tag = built.stdout.strip().splitlines()[-1]
    k.cluster("load-image", tag)
    return tag


def _container(name: str, tag: str, command: list[str], **extra: object) -> dict:
    return {"name": name, "image": tag, "imagePullPolicy": "Never", "command": command, **extra}


def server_pod(name: str, tag: str, node: str = k.NODE_1) -> dict:
    return k.bare_pod(
        name,
        node,
        [
            _container("redis", tag, ["redis-server", "--save", "", "--appendonly", "no", "--protected-mode", "no"]),
            _container("inpod", tag, ["sh", "-c", WAIT_FOR_SERVER + "redis-cli -r -1 -i 0.02 INCR inpod"]),
            _container("tick", tag, ["sh", "-c", WAIT_FOR_SERVER + "redis-cli -r -1 -i 0.01 TIME"]),
        ],
    )


@dataclass(frozen=True)
class Setup:
    server: str
    client: str
    service_ip: str


def start(name: str, tag: str) -> Setup:
    """The server pod and its Service on lpm-node-1, the outside client on lpm-node-2; both clients counting.

    Twice in CI and in 4 of 60 benchmark setups, before any migration, the outside client's every connection to
    a new Service was refused for minutes (the pod itself answered on its IP); the client now starts only once
    node-2 routes the Service (below). Should it still happen, the first try's state is kept in a warning (the
    pytest summary shows it), and the setup starts once more under other names. A second refusal fails the test
    with the same evidence."""
    try:
        return _start(name, tag, patience=60)
    except AssertionError as first:
        warnings.warn(f"redis setup {name}: {first}; starting again as {name}-again", stacklevel=2)
        stop(Setup(name, f"{name}-client", ""))
        return _start(f"{name}-again", tag, patience=120)


def _start(name: str, tag: str, patience: float) -> Setup:
    svc = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": k.NAMESPACE},
        "spec": {"selector": {"app.kubernetes.io/name": name}, "ports": [{"port": 6379, "targetPort": 6379}]},
    }
    k.apply(server_pod(name, tag), svc)
    k.wait_for(f"pod {name} Ready", lambda: k.pod_ready(name), timeout=120)
    ip = str(k.kubectl_json("-n", k.NAMESPACE, "get", "service", name)["spec"]["clusterIP"])
    # The outside client's first connect must not leave before node-2's kube-proxy sends the new ClusterIP to the
    # server: a SYN sent earlier is tracked un-NATed, and the refused setups showed such an entry from the client's
    # first attempt (kubernetes/kubernetes#48719 describes the same race).
    endpoint = f"{k.NAMESPACE}/{name} -> {_pod_ip(name)}:6379"
    k.wait_for(
        f"{k.NODE_2}'s kube-proxy rules for Service {name}",
        lambda: endpoint in k.cluster("exec", k.NODE_2, "--", "iptables-save", "-t", "nat"),
        timeout=60,
        interval=0.2,
    )
    client = f"{name}-client"
    loop = _container("loop", tag, ["sh", "-c", OUTSIDE_LOOP], env=[{"name": "REDIS", "value": ip}])
    k.apply(k.bare_pod(client, k.NODE_2, [loop]))
    k.wait_for(
        "both clients counting",
        lambda: len(ints(name, "inpod")) > 20 and len(acked(client)) > 20,
        timeout=patience,
        explain=lambda: _why_not_counting(name, client, ip),
    )
    return Setup(name, client, ip)


def _why_not_counting(server: str, client: str, ip: str) -> str:
    """What the two clients printed, where their pods are, and how lpm-node-2 routes to the Service."""
    server_ip, client_ip = _pod_ip(server), _pod_ip(client)
    pods = k.kubectl("-n", k.NAMESPACE, "get", "pods", "-o", "wide", check=False).stdout
    endpoints = (
        "{range .items[*].endpoints[*]}{.addresses} ready={.conditions.ready} serving={.conditions.serving}\n{end}"
    )
    slices = k.kubectl(
        "-n", k.NAMESPACE, "get", "endpointslices", "-l", f"kubernetes.io/service-name={server}",
        "-o", f"jsonpath={endpoints}", check=False,
    ).stdout  # fmt: skip
    events = k.kubectl("-n", k.NAMESPACE, "get", "events", "--sort-by=.lastTimestamp", check=False).stdout
    client_log = k.kubectl("-n", k.NAMESPACE, "logs", client, "--tail=5", check=False)
    probe = (
        # The Service's rules, and where its chain sends a connection (the endpoints' DNAT rules).
        "rules=$(iptables-save); "
        f"svc=$(printf '%s\\n' \"$rules\" | grep -F -- '{ip}/32' | grep -o 'KUBE-SVC-[A-Z0-9]*' | head -1); "
        f"printf '%s\\n' \"$rules\" | grep -F -e '{ip}' -e \"${{svc:-none}}\"; "
        "for sep in $(printf '%s\\n' \"$rules\" | grep -F -- \"-A ${svc:-none} \" | grep -o 'KUBE-SEP-[A-Z0-9]*'); "
        'do printf \'%s\\n\' "$rules" | grep -F -- "-A $sep "; done; '
        f"ip -o addr show | grep -v ' inet6 ' ; "
        f"ip route get {server_ip} ; "
        f"timeout 3 bash -c 'echo > /dev/tcp/{server_ip}/6379' && echo reached {server} directly; "
        f"timeout 3 bash -c 'echo > /dev/tcp/{ip}/6379' && echo the node itself reached the Service; "
        # The connections the node's conntrack holds to the Service and to the server (NAT state, TCP state).
        f"conntrack -L -p tcp -d {ip} 2>/dev/null | tail -4; "
        f"conntrack -L -p tcp --reply-src {server_ip} 2>/dev/null | tail -4; "
        # Every connection of the client pod the node tracks (one with the ClusterIP in its reply direction was
        # never DNATed), and the hooks that send pods' traffic through kube-proxy's rules.
        f"conntrack -L -p tcp -s {client_ip} 2>/dev/null | tail -6; "
        "iptables-save -t nat | grep -E '^-A (PREROUTING|OUTPUT) '; nft list tables; "
        # kube-proxy's own counters: a partial iptables restore that failed is kube-proxy issue #121362's trail.
        'python3 -c \'import urllib.request as u; print(u.urlopen("http://127.0.0.1:10249/metrics", timeout=3)'
        ".read().decode())' | grep -E '^kubeproxy_sync_proxy_rules_(iptables_partial_restore_failures_total|"
        "last_timestamp_seconds|iptables_last)'"
    )
    try:
        node_view = k.cluster("exec", k.NODE_2, "--", "sh", "-c", probe + " 2>&1")
    except Exception as exc:  # the diagnosis must not hide the failure it explains
        node_view = f"cannot look: {exc}"
    direct = k.kubectl("-n", k.NAMESPACE, "exec", client, "--", "redis-cli", "-h", server_ip, "PING", check=False)
    return (
        f"the outside client's PING to the server's pod IP (no Service): {direct.stdout.strip()}{direct.stderr}\n"
        f"in-pod values: {len(ints(server, 'inpod'))}, outside acks: {len(acked(client))} (Service {ip})\n"
        f"outside client's last lines: {client_log.stdout[-800:]}{client_log.stderr[-400:]}\n"
        f"{k.NODE_2}'s view (the Service's rules, its addresses, the route to the server):\n{node_view}\n"
        f"pods:\n{pods}\nendpoint slices:\n{slices}\nevents (last 30):\n" + "\n".join(events.splitlines()[-30:])
    )


def _pod_ip(pod: str) -> str:
    return str(k.kubectl_json("-n", k.NAMESPACE, "get", "pod", pod).get("status", {}).get("podIP", ""))


def stop(setup: Setup, *pods: str) -> None:
    k.kubectl("-n", k.NAMESPACE, "delete", "pod", setup.server, setup.client, *pods, "--wait=false", check=False)
    k.kubectl("-n", k.NAMESPACE, "delete", "service", setup.server, "--wait=false", check=False)


def ints(pod: str, container: str) -> list[int]:
    out = k.kubectl("-n", k.NAMESPACE, "logs", pod, "-c", container, check=False).stdout
    return [int(line) for line in out.split() if line.isdigit()]


def acks(pod: str) -> list[tuple[int, float]]:
    """(value, the client's clock) of every acknowledged INCR of the outside client."""
    out = k.kubectl("-n", k.NAMESPACE, "logs", pod, check=False).stdout
    found = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "ok" and parts[1].isdigit():
            found.append((int(parts[1]), float(parts[2])))
    return found


def attempts(pod: str) -> list[tuple[float, bool]]:
    """(the client's clock as the attempt ended, whether it was acknowledged) of every INCR the outside client
    tried: a failed one ended in an error (a refused connection, say), not in a hang."""
    out = k.kubectl("-n", k.NAMESPACE, "logs", pod, check=False).stdout
    found = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0] in ("ok", "err"):
            try:
                found.append((float(parts[2] if parts[0] == "ok" else parts[1]), parts[0] == "ok"))
            except ValueError:
                continue
    return found


def acked(pod: str) -> list[int]:
    return [v for v, _ in acks(pod)]


def server_clock(pod: str) -> list[float]:
    """The server's TIME replies the `tick` client printed (seconds, microseconds pairs)."""
    values = ints(pod, "tick")
    return [s + us / 1e6 for s, us in zip(values[::2], values[1::2], strict=False)]


def largest_gap(times: list[float]) -> float:
    return max((b - a for a, b in itertools.pairwise(sorted(times))), default=0.0)


def cli(pod: str, *args: str) -> str:
    return k.kubectl("-n", k.NAMESPACE, "exec", pod, "-c", "redis", "--", "redis-cli", *args).stdout.strip()


def client_line(pod: str, command: str) -> str:
    """The CLIENT LIST entry of the in-pod client whose last command is `command` (over loopback)."""
    out = cli(pod, "CLIENT", "LIST")
    return next((line for line in out.splitlines() if "addr=127.0.0.1:" in line and f"cmd={command}" in line), "")
