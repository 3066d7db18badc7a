"""Pods with established TCP connections move (issue 14), on both engines, through real CRIU and kube-proxy.

The counter holds a loopback connection (both ends in the pod) and a connection through a ClusterIP Service to
a server in another pod. After the move the loopback connection keeps echoing with no reconnect; the outside one
fails on the target's first send (it was aborted before the restored process ran) and the counter reconnects
at once, through the same Service; the server sees the old connection end.
"""

from __future__ import annotations

import json

import pytest
from e2e import lpmctl as k

pytestmark = pytest.mark.usefixtures("lpm_cluster")

# A TCP server that prints one JSON line per connection event (python3 is in the demo image).
SINK = """
import json, socket, threading, time
def say(**kw): print(json.dumps(dict(kw, ts=round(time.time(), 3))), flush=True)
def serve(c, a):
    peer = f"{a[0]}:{a[1]}"
    say(event="accepted", peer=peer)
    try:
        while c.recv(4096):
            pass
        say(event="eof", peer=peer)
    except OSError as e:
        say(event="error", peer=peer, error=type(e).__name__)
s = socket.create_server(("0.0.0.0", 7001))
while True:
    c, a = s.accept()
    threading.Thread(target=serve, args=(c, a), daemon=True).start()
"""


def _sink(name: str) -> str:
    """The server pod on lpm-node-1 and its ClusterIP Service; returns the Service's host:port."""
    pod = k.bare_pod(
        name,
        k.NODE_1,
        [
            {
                "name": "sink",
                "image": k.DEMO_IMAGE,
                "imagePullPolicy": "Never",
                "command": ["/usr/bin/python3", "-c", SINK],
            }
        ],
    )
    svc = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": k.NAMESPACE},
        "spec": {"selector": {"app.kubernetes.io/name": name}, "ports": [{"port": 7001, "targetPort": 7001}]},
    }
    k.apply(pod, svc)
    k.wait_for(f"pod {name} Ready", lambda: k.pod_ready(name), timeout=120)
    ip = k.kubectl_json("-n", k.NAMESPACE, "get", "service", name)["spec"]["clusterIP"]
    return f"{ip}:7001"


def _events(sink: str) -> list[dict]:
    out = k.kubectl("-n", k.NAMESPACE, "logs", sink, check=False).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def _pod_ip(pod: str) -> str:
    return str(k.kubectl_json("-n", k.NAMESPACE, "get", "pod", pod)["status"]["podIP"])


@pytest.mark.parametrize("engine", ["Live", "Image"])
def test_in_pod_connections_survive_and_outside_ones_reconnect_at_once(engine: str) -> None:
    sink, pod, mig = f"sink-{engine.lower()}", f"conn-{engine.lower()}", f"mig-conn-{engine.lower()}"
    service = _sink(sink)
    k.start_counter(pod, extra_args=("--tcp-loopback", "--tcp-peer", service))
    old_ip = _pod_ip(pod)
    k.wait_for("the counter connected to the sink", lambda: any(e["event"] == "accepted" for e in _events(sink)))
    assert [e["peer"].split(":")[0] for e in _events(sink) if e["event"] == "accepted"] == [old_ip]
    before = k.Follow(pod)

    dry = k.lpm("migrate", pod, "--to", k.NODE_2, "--dry-run", "--engine", engine, "--timeout", "120")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "1 external" in dry.stdout and "connections move" in dry.stdout, dry.stdout

    res = k.lpm("migrate", pod, "--to", k.NODE_2, "--name", mig, "--engine", engine, "--wait", "--timeout", "300")
    assert res.returncode == 0, res.stdout + res.stderr
    restored = k.migration(mig)["status"]["restoredPodName"]
    new_ip = _pod_ip(restored)
    assert new_ip != old_ip

    last = before.lines()[-1]
    k.wait_for("updates on the target", lambda: len([s for s in k.states(restored) if s["seq"] > last["seq"]]) >= 20)
    after = [s for s in k.states(restored) if s["seq"] > last["seq"]]
    seqs = [last["seq"]] + [s["seq"] for s in after]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), f"updates lost or repeated: {seqs[:10]}"
    # The loopback connection: every event echoed on the target, over the same connection (no reconnect path).
    assert all(s["loopback_echoes"] == s["events"] for s in after), [s for s in after if s["loopback_echoes"] < 0]
    # The outside connection: aborted before the restored process ran, so its first send fails at once...
    first = after[0]
    assert first["peer_sent"] is False and "abort" in first.get("peer_error", "").lower(), first
    # ...and the next event reconnects through the Service and carries on.
    assert all(s["peer_sent"] for s in after[1:]), [s for s in after[1:] if not s["peer_sent"]]
    assert {s["peer_reconnects"] for s in after[1:]} == {last["peer_reconnects"] + 1}
    # (The sink sees the new connection from lpm-node-2's address: the CNI masquerades traffic between nodes.)
    accepted = k.wait_for(
        "the sink accepting the restored pod's connection",
        lambda: [e for e in _events(sink) if e["event"] == "accepted"][1:],
    )
    assert len(accepted) == 1 and not accepted[0]["peer"].startswith(old_ip + ":"), accepted
    # The old connection ended at the sink: a RST from the target, or the source's close when it was deleted.
    ended = k.wait_for(
        "the old connection's end at the sink",
        lambda: [e for e in _events(sink) if e["event"] != "accepted" and e["peer"].startswith(old_ip + ":")],
    )
    assert len(ended) == 1, ended
    k.kubectl("-n", k.NAMESPACE, "delete", "pod", restored, sink, "--wait=false", check=False)
    k.kubectl("-n", k.NAMESPACE, "delete", "service", sink, "--wait=false", check=False)
