"""Debian's redis-server migrates under load from real clients (issue 14), on both engines.

- Inside the pod, a second container runs `redis-cli -r -1 -i 0.02 INCR inpod`: one connection over 127.0.0.1
  for its whole life, printing every reply. It must go on counting across the move on that same connection:
  no reconnect (the restored server still lists it, as old as the pod), no value lost or repeated.
- On the other node, a client pod runs `redis-cli -h <ClusterIP> INCR ext` in a loop through the Service, and
  prints each acknowledged value. It reconnects by itself after the move, and no acknowledged write is lost:
  the restored server's value is at least every value a client was told.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from e2e import lpmctl as k

pytestmark = pytest.mark.usefixtures("lpm_cluster")

BUILD = Path(__file__).resolve().parents[2] / "src" / "docker" / "redis" / "build.sh"
OUTSIDE_LOOP = (
    'while true; do if v=$(redis-cli -h "$REDIS" INCR ext 2>&1); then echo "ok $v"; else echo "err $v"; fi; '
    "sleep 0.02; done"
)


@pytest.fixture(scope="module")
def redis_image() -> str:
    built = subprocess.run(["bash", str(BUILD)], capture_output=True, text=True, check=False)
    assert built.returncode == 0, built.stderr
    tag = built.stdout.strip().splitlines()[-1]
    k.cluster("load-image", tag)
    return tag


def _apply(*objs: dict) -> None:
    k.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objs)}))


def _pod(name: str, node: str, containers: list[dict]) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": k.NAMESPACE, "labels": {"app.kubernetes.io/name": name}},
        "spec": {
            "nodeName": node,
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "terminationGracePeriodSeconds": 1,
            "containers": containers,
        },
    }


def _redis_cli(pod: str, *args: str) -> str:
    return k.kubectl("-n", k.NAMESPACE, "exec", pod, "-c", "redis", "--", "redis-cli", *args).stdout.strip()


def _ints(pod: str, container: str) -> list[int]:
    out = k.kubectl("-n", k.NAMESPACE, "logs", pod, "-c", container, check=False).stdout
    return [int(line) for line in out.split() if line.isdigit()]


@pytest.mark.parametrize("engine", ["Live", "Image"])
def test_redis_keeps_its_in_pod_client_and_loses_no_acknowledged_write(engine: str, redis_image: str) -> None:
    name, client, mig = f"redis-{engine.lower()}", f"redis-client-{engine.lower()}", f"mig-redis-{engine.lower()}"
    server = {
        "name": "redis",
        "image": redis_image,
        "imagePullPolicy": "Never",
        "command": ["redis-server", "--save", "", "--appendonly", "no", "--protected-mode", "no"],
    }
    inpod = {
        "name": "inpod",
        "image": redis_image,
        "imagePullPolicy": "Never",
        "command": ["sh", "-c", "until redis-cli PING; do sleep 0.1; done; exec redis-cli -r -1 -i 0.02 INCR inpod"],
    }
    svc = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": k.NAMESPACE},
        "spec": {"selector": {"app.kubernetes.io/name": name}, "ports": [{"port": 6379, "targetPort": 6379}]},
    }
    _apply(_pod(name, k.NODE_1, [server, inpod]), svc)
    k.wait_for(f"pod {name} Ready", lambda: k.pod_ready(name), timeout=120)
    ip = k.kubectl_json("-n", k.NAMESPACE, "get", "service", name)["spec"]["clusterIP"]
    outside = {
        "name": "loop",
        "image": redis_image,
        "imagePullPolicy": "Never",
        "command": ["sh", "-c", OUTSIDE_LOOP],
        "env": [{"name": "REDIS", "value": ip}],
    }
    _apply(_pod(client, k.NODE_2, [outside]))
    k.wait_for("both clients counting", lambda: len(_ints(name, "inpod")) > 20 and "ok 20" in _acks(client))
    source_inpod = k.Follow(name, "inpod")
    inpod_client, seen_at = _client_line(name), time.monotonic()
    assert inpod_client, "the in-pod client is not connected"

    res = k.lpm("migrate", name, "--to", k.NODE_2, "--name", mig, "--engine", engine, "--wait", "--timeout", "300")
    assert res.returncode == 0, res.stdout + res.stderr
    restored = k.migration(mig)["status"]["restoredPodName"]
    acked_before = len(_acked(client))

    # The in-pod client: the same connection, counting on with no value lost or repeated.
    printed: list[Any] = source_inpod.lines()  # redis-cli prints bare integers (JSON numbers)
    last = max(v for v in printed if isinstance(v, int))
    k.wait_for("the in-pod client counting on the target", lambda: len(_after(restored, last)) > 20)
    values = _after(restored, last)
    assert values[0] == last + 1 and values == list(range(last + 1, values[-1] + 1)), values[:10]
    again, elapsed = _client_line(restored), time.monotonic() - seen_at
    assert again and again.split()[0] == inpod_client.split()[0], (inpod_client, again)  # the same client id
    # Its connection is as old as it was plus the time since: not a new one (the server's clock went on).
    assert _age(again) >= _age(inpod_client) + elapsed - 2, (inpod_client, again, elapsed)

    # The client on the other node: reconnected by itself, and every acknowledged write is there.
    k.wait_for("the outside client acknowledged after the move", lambda: len(_acked(client)) > acked_before + 20)
    acked = _acked(client)
    assert acked == sorted(set(acked)), "an acknowledged value repeated or went back: a write was lost"
    final = int(_redis_cli(restored, "GET", "ext"))
    assert final >= acked[-1]
    k.kubectl("-n", k.NAMESPACE, "delete", "pod", restored, client, "--wait=false", check=False)
    k.kubectl("-n", k.NAMESPACE, "delete", "service", name, "--wait=false", check=False)


def _after(pod: str, last: int) -> list[int]:
    return sorted({v for v in _ints(pod, "inpod") if v > last})


def _age(client_line: str) -> int:
    return int(next(f for f in client_line.split() if f.startswith("age=")).split("=")[1])


def _acks(pod: str) -> str:
    return k.kubectl("-n", k.NAMESPACE, "logs", pod, check=False).stdout


def _acked(pod: str) -> list[int]:
    return [int(line.split()[1]) for line in _acks(pod).splitlines() if line.startswith("ok ") and line[3:].isdigit()]


def _client_line(pod: str) -> str:
    """The in-pod client's entry in CLIENT LIST (the one whose last command is INCR from loopback)."""
    out = k.kubectl("-n", k.NAMESPACE, "exec", pod, "-c", "redis", "--", "redis-cli", "CLIENT", "LIST").stdout
    return next((line for line in out.splitlines() if "addr=127.0.0.1:" in line and "cmd=incr" in line), "")
