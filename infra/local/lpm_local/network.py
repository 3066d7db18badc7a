"""The host bridge and each node's network namespace (veth, addresses, host-gw routes)."""

from __future__ import annotations

from pathlib import Path

from lpm_local.config import BRIDGE, HOST_IP, NET_PREFIX, NODES
from lpm_local.host import out, run


def link_exists(name: str, netns: str | None = None) -> bool:
    cmd = ["ip"] + (["-n", netns] if netns else []) + ["link", "show", name]
    return run(cmd, check=False, quiet=True).returncode == 0


def setup_host_network() -> None:
    if not link_exists(BRIDGE):
        run(["ip", "link", "add", BRIDGE, "type", "bridge"])
    addrs = out(["ip", "-o", "-4", "addr", "show", "dev", BRIDGE])
    if f"{HOST_IP}/{NET_PREFIX}" not in addrs:
        run(["ip", "addr", "add", f"{HOST_IP}/{NET_PREFIX}", "dev", BRIDGE])
    run(["ip", "link", "set", BRIDGE, "up"])


def setup_node_network(name: str) -> None:
    n = NODES[name]
    if not Path(f"/run/netns/{name}").exists():
        run(["ip", "netns", "add", name])
    if not link_exists("eth0", name):
        if link_exists(n["veth"]):
            run(["ip", "link", "del", n["veth"]])
        run(["ip", "link", "add", n["veth"], "type", "veth", "peer", "name", "eth0", "netns", name])
        run(["ip", "link", "set", n["veth"], "master", BRIDGE, "up"])
    ipn = ["ip", "-n", name]
    run([*ipn, "link", "set", "lo", "up"])
    addrs = out([*ipn, "-o", "-4", "addr", "show", "dev", "eth0"])
    if f"{n['ip']}/{NET_PREFIX}" not in addrs:
        run([*ipn, "addr", "add", f"{n['ip']}/{NET_PREFIX}", "dev", "eth0"])
    run([*ipn, "link", "set", "eth0", "up"])
    run([*ipn, "route", "replace", "default", "via", HOST_IP])
    # host-gw, as in a real cluster: every other node's pod CIDR through that node, so pod IPs and Services
    # reach pods on any node (the routes die with the netns).
    for other, o in NODES.items():
        if other != name:
            run([*ipn, "route", "replace", o["pod_cidr"], "via", o["ip"]])
    # The host (the control plane) reaches this node's pods too, as a control plane does in a real cluster: the
    # API server calls admission webhooks at their pods' addresses (--enable-aggregator-routing). These routes
    # go with the bridge at `down`.
    run(["ip", "route", "replace", n["pod_cidr"], "via", n["ip"]])
    # Pod traffic is routed (and masqueraded) by the node netns itself; sysctls here die with the netns.
    run(["ip", "netns", "exec", name, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])
