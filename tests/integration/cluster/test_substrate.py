"""Substrate proof, without LPM: the kubelet checkpoint API + an OCI checkpoint image restore on another node.

What LPM will automate, done by hand on the real local cluster (infra/local/cluster):
  1. a counter pod on lpm-node-1 (local busybox-static image; each line is "<token> <n>", where the token is
     drawn once when the process starts, so a restart would show a new token and n from 0);
  2. POST https://<node-1>:10250/checkpoint/{ns}/{pod}/{container} with apiserver-kubelet-client.{crt,key},
     verifying the kubelet's serving cert with the cluster ca.crt;
  3. the archive (a path inside node-1) is copied to the shared checkpoint directory;
  4. converted to an OCI checkpoint image (single layer = archive contents, annotations
     io.kubernetes.cri-o.annotations.checkpoint.name / org.criu.checkpoint.container.name = container name);
  5. imported into lpm-node-2's containerd only;
  6. a pod on lpm-node-2 names that image (imagePullPolicy: Never);
  7. the counter continues: same token, n >= the value read before the checkpoint, and still increasing.

Needs root and the machine's build deps; the module fixture runs `infra/local/cluster up` (cached builds).
Environment: LPM_CLUSTER_SCRIPT (path to infra/local/cluster), LPM_CLUSTER_KEEP=1 (leave the cluster up).
"""

from __future__ import annotations

import http.client
import importlib.util
import json
import os
import re
import ssl
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

STATE = Path(os.environ.get("LPM_LOCAL_STATE", "/var/lib/lpm-local"))
KUBECONFIG = STATE / "kubeconfig"
SHARED = STATE / "shared-checkpoints"
SOURCE_NODE, TARGET_NODE = "lpm-node-1", "lpm-node-2"
NODE_IPS = {"lpm-node-1": "172.31.250.11", "lpm-node-2": "172.31.250.12"}
COUNTER_IMAGE = "localhost/lpm-counter:1"
CONTAINER = "counter"
COUNTER_SCRIPT = (
    "tok=$(cat /proc/sys/kernel/random/uuid); i=0; "
    'while true; do echo "$tok $i"; echo "$tok $i" > /tmp/counter; i=$((i+1)); sleep 1; done'
)
LINE_RE = re.compile(r"^([0-9a-f-]{36}) (\d+)$")


def _find_infra_local() -> Path:
    env = os.environ.get("LPM_CLUSTER_SCRIPT")
    if env:
        return Path(env).resolve().parent
    here = Path(__file__).resolve()
    for parent in here.parents:
        cand = parent / "infra" / "local" / "cluster"
        if cand.exists():
            return cand.parent
    # Pants sandboxes: fall back to the current working directory.
    cand = Path.cwd() / "infra" / "local" / "cluster"
    if cand.exists():
        return cand.parent
    raise FileNotFoundError("infra/local/cluster not found (set LPM_CLUSTER_SCRIPT)")


INFRA = _find_infra_local()
CLUSTER = INFRA / "cluster"


def _load_oci_image():
    spec = importlib.util.spec_from_file_location("lpm_local_oci_image", INFRA / "oci_image.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


oci_image = _load_oci_image()
TIMINGS: dict[str, float] = {}


def cluster(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(CLUSTER), *args], check=True, **kw)


@pytest.fixture(scope="module")
def kube():
    if os.geteuid() != 0:
        pytest.skip("the local cluster needs root")
    was_up = subprocess.run([sys.executable, str(CLUSTER), "status"], capture_output=True).returncode == 0
    t = time.monotonic()
    cluster("up")
    TIMINGS["cluster_up_s"] = round(time.monotonic() - t, 2)
    from kubernetes import client, config

    api_client = config.new_client_from_config(config_file=str(KUBECONFIG))
    yield client.CoreV1Api(api_client)
    api_client.close()
    if not was_up and os.environ.get("LPM_CLUSTER_KEEP") != "1":
        cluster("down")


@pytest.fixture(scope="module")
def namespace(kube):
    from kubernetes import client

    ns = f"substrate-{uuid.uuid4().hex[:6]}"
    kube.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    deadline = time.time() + 60
    while time.time() < deadline:  # the service-account controller creates "default" asynchronously
        if any(sa.metadata.name == "default" for sa in kube.list_namespaced_service_account(ns).items):
            break
        time.sleep(0.5)
    yield ns
    kube.delete_namespace(ns)


def _pod(name: str, node: str, image: str) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "nodeName": node,
            "dnsPolicy": "Default",
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "automountServiceAccountToken": True,
            "containers": [
                {
                    "name": CONTAINER,
                    "image": image,
                    "imagePullPolicy": "Never",
                    # The restored pod repeats the source's command: containerd builds the OCI spec from the pod
                    # spec (+ the base image config) before CRIU replaces the process.
                    "command": ["sh", "-c", COUNTER_SCRIPT],
                }
            ],
        },
    }


def _wait_running(kube, ns: str, name: str, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    pod = None
    while time.time() < deadline:
        pod = kube.read_namespaced_pod(name, ns)
        if pod.status.phase == "Running" and all(c.ready for c in pod.status.container_statuses or []):
            return
        if pod.status.phase in ("Failed", "Succeeded"):
            break
        for cs in pod.status.container_statuses or []:
            w = cs.state.waiting
            if w and w.reason in ("CreateContainerError", "ErrImageNeverPull", "CrashLoopBackOff"):
                raise AssertionError(f"{name}: {w.reason}: {w.message}")
        time.sleep(0.25)
    events = kube.list_namespaced_event(ns, field_selector=f"involvedObject.name={name}")
    raise AssertionError(
        f"{name} not running: {pod and pod.status}\n" + "\n".join(f"{e.reason}: {e.message}" for e in events.items)
    )


def _last_count(kube, ns: str, name: str) -> tuple[str, int]:
    logs = kube.read_namespaced_pod_log(name, ns, container=CONTAINER, tail_lines=5)
    lines = [m for m in (LINE_RE.match(ln.strip()) for ln in logs.splitlines()) if m]
    assert lines, f"no counter output from {name}: {logs!r}"
    return lines[-1].group(1), int(lines[-1].group(2))


def _wait_count(kube, ns: str, name: str, at_least: int, timeout: float = 60) -> tuple[str, int]:
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            last = _last_count(kube, ns, name)
            if last[1] >= at_least:
                return last
        except AssertionError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{name}: counter did not reach {at_least} (last {last})")


def kubelet_checkpoint(node: str, ns: str, pod: str, container: str, timeout_s: int = 60) -> list[str]:
    """POST /checkpoint/{ns}/{pod}/{container} on the node's kubelet, as kubeadm's apiserver-kubelet-client."""
    pki = STATE / "nodes" / node / "etc-kubernetes" / "pki"  # = /etc/kubernetes/pki inside the node
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    ctx.load_cert_chain(str(pki / "apiserver-kubelet-client.crt"), str(pki / "apiserver-kubelet-client.key"))
    conn = http.client.HTTPSConnection(NODE_IPS[node], 10250, context=ctx, timeout=timeout_s + 30)
    try:
        conn.request("POST", f"/checkpoint/{ns}/{pod}/{container}?timeout={timeout_s}")
        resp = conn.getresponse()
        body = resp.read().decode()
    finally:
        conn.close()
    assert resp.status == 200, f"kubelet checkpoint: HTTP {resp.status}: {body}"
    return json.loads(body)["items"]


def test_checkpoint_on_node1_restore_on_node2(kube, namespace, tmp_path):
    ns = namespace
    t_all = time.monotonic()

    # 1. the counter image (busybox-static, built locally) on the source node only
    with tempfile.TemporaryDirectory(prefix="lpm-counter-") as td:
        root = Path(td) / "rootfs"
        oci_image.busybox_rootfs(root)
        layer = Path(td) / "layer.tar"
        oci_image.tar_directory(root, layer)
        archive = tmp_path / "counter.tar"
        oci_image.write_image(archive, COUNTER_IMAGE, layer, config={"Env": ["PATH=/bin"], "Cmd": ["sh"]})
    cluster("load-image", str(archive), "--node", SOURCE_NODE)
    # The restore also needs the checkpoint's base image on the target (containerd looks it up by name).
    cluster("load-image", str(archive), "--node", TARGET_NODE)

    from kubernetes.utils import create_from_dict

    api_client = kube.api_client
    t = time.monotonic()
    create_from_dict(api_client, _pod("counter", SOURCE_NODE, COUNTER_IMAGE), namespace=ns)
    _wait_running(kube, ns, "counter")
    TIMINGS["source_pod_start_s"] = round(time.monotonic() - t, 2)
    token, before = _wait_count(kube, ns, "counter", at_least=5)

    # 2. kubelet checkpoint API on node 1
    t = time.monotonic()
    items = kubelet_checkpoint(SOURCE_NODE, ns, "counter", CONTAINER)
    TIMINGS["kubelet_checkpoint_s"] = round(time.monotonic() - t, 3)
    assert len(items) == 1 and items[0].startswith("/var/lib/kubelet/checkpoints/checkpoint-counter_"), items
    node_path = items[0]

    # 3. the archive is a path inside node 1's mount namespace; copy it to the shared checkpoint dir
    t = time.monotonic()
    shared = SHARED / f"{ns}-{Path(node_path).name}"
    cluster("exec", SOURCE_NODE, "--", "cp", node_path, str(shared))
    TIMINGS["archive_copy_s"] = round(time.monotonic() - t, 3)
    TIMINGS["archive_bytes"] = shared.stat().st_size

    # The source keeps running after a kubelet checkpoint (like criu --leave-running); stop it, as a
    # migration would, so only one counter exists.
    kube.delete_namespaced_pod("counter", ns, grace_period_seconds=0)

    # 4. OCI checkpoint image
    t = time.monotonic()
    ckpt_ref = f"localhost/lpm-checkpoint/counter:{ns}"
    image_tar = tmp_path / "checkpoint-image.tar"
    oci_image.checkpoint_image(shared, CONTAINER, ckpt_ref, image_tar)
    TIMINGS["checkpoint_image_build_s"] = round(time.monotonic() - t, 3)

    # 5. into node 2's containerd only
    t = time.monotonic()
    cluster("load-image", str(image_tar), "--node", TARGET_NODE)
    TIMINGS["image_load_s"] = round(time.monotonic() - t, 3)

    # 6. a pod on node 2 from the checkpoint image
    t = time.monotonic()
    create_from_dict(api_client, _pod("counter-restored", TARGET_NODE, ckpt_ref), namespace=ns)
    _wait_running(kube, ns, "counter-restored")
    TIMINGS["restore_pod_running_s"] = round(time.monotonic() - t, 3)

    # 7. the counter continues
    tok2, after = _wait_count(kube, ns, "counter-restored", at_least=before, timeout=30)
    TIMINGS["total_migration_s"] = round(time.monotonic() - t_all, 2)
    assert tok2 == token, f"restored process is a new one (token {tok2} != {token}): it restarted from scratch"
    assert after >= before, f"counter went back: {after} < {before}"
    tok3, later = _wait_count(kube, ns, "counter-restored", at_least=after + 2, timeout=30)
    assert tok3 == token and later > after
    restored = kube.read_namespaced_pod("counter-restored", ns)
    assert restored.spec.node_name == TARGET_NODE
    ann = restored.metadata.annotations or {}
    print(f"\ncounter before checkpoint {before}, after restore {after}, later {later}; pod annotations {ann}")
    print("timings: " + json.dumps(TIMINGS))
    try:
        (STATE / "logs").mkdir(parents=True, exist_ok=True)
        (STATE / "logs" / "substrate-timings.json").write_text(json.dumps(TIMINGS, indent=2))
    except OSError:
        pass
    shared.unlink(missing_ok=True)


def test_nodes_daemonset_hostpath_and_in_cluster_api(kube, namespace):
    """What the LPM agent DaemonSet relies on: per-node hostPath (the agent's state too), the node PKI, the kubelet
    and the apiserver."""
    from kubernetes import client

    ns = namespace
    nodes = {n.metadata.name: n for n in kube.list_node().items}
    assert set(nodes) >= {SOURCE_NODE, TARGET_NODE}
    for name, node in nodes.items():
        ready = [c for c in node.status.conditions if c.type == "Ready"]
        assert ready and ready[0].status == "True", f"{name} not Ready"
        ips = {a.address for a in node.status.addresses if a.type == "InternalIP"}
        assert NODE_IPS[name] in ips
    marker = f"/var/lib/kubelet/checkpoints/lpm-substrate-{ns}"
    script = (
        f'echo "$NODE" > {marker}; echo "$NODE" > /agent-state/lpm-substrate-{ns}; '
        # in-cluster apiserver address injected by the kubelet (ClusterIP via kube-proxy in the node netns)
        "wget -q -O /tmp/v --no-check-certificate https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT/version "
        '&& echo "api-ok $(grep gitVersion /tmp/v)"; '
        # the kubelet on this node's own address, with the node PKI mounted from the host
        'ls /etc/kubernetes/pki | tr "\\n" " "; echo; sleep 3600'
    )
    ds = {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": "probe"},
        "spec": {
            "selector": {"matchLabels": {"app": "probe"}},
            "template": {
                "metadata": {"labels": {"app": "probe"}},
                "spec": {
                    "hostNetwork": True,
                    "dnsPolicy": "ClusterFirstWithHostNet",
                    "terminationGracePeriodSeconds": 1,
                    "containers": [
                        {
                            "name": "probe",
                            "image": COUNTER_IMAGE,
                            "imagePullPolicy": "Never",
                            "command": ["sh", "-c", script],
                            "env": [{"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}],
                            "volumeMounts": [
                                {"name": "ckpt", "mountPath": "/var/lib/kubelet/checkpoints"},
                                {"name": "pki", "mountPath": "/etc/kubernetes/pki", "readOnly": True},
                                {"name": "agent-state", "mountPath": "/agent-state"},
                            ],
                        }
                    ],
                    "volumes": [
                        {"name": "ckpt", "hostPath": {"path": "/var/lib/kubelet/checkpoints"}},
                        {"name": "pki", "hostPath": {"path": "/etc/kubernetes/pki"}},
                        # the agent's freeze records: one node's agent must never see another's
                        {
                            "name": "agent-state",
                            "hostPath": {"path": "/var/lib/lpm-agent", "type": "DirectoryOrCreate"},
                        },
                    ],
                },
            },
        },
    }
    # COUNTER_IMAGE is loaded on both nodes by the migration test; load it again in case this test runs alone.
    with tempfile.TemporaryDirectory(prefix="lpm-probe-") as td:
        root = Path(td) / "rootfs"
        oci_image.busybox_rootfs(root)
        layer = Path(td) / "layer.tar"
        oci_image.tar_directory(root, layer)
        archive = Path(td) / "img.tar"
        oci_image.write_image(archive, COUNTER_IMAGE, layer, config={"Env": ["PATH=/bin"], "Cmd": ["sh"]})
        cluster("load-image", str(archive))
    client.AppsV1Api(kube.api_client).create_namespaced_daemon_set(ns, ds)
    deadline = time.time() + 90
    outputs: dict[str, str] = {}
    while time.time() < deadline and len(outputs) < 2:
        for pod in kube.list_namespaced_pod(ns, label_selector="app=probe").items:
            if pod.status.phase == "Running" and pod.spec.node_name not in outputs:
                log = kube.read_namespaced_pod_log(pod.metadata.name, ns)
                if "api-ok" in log and "apiserver-kubelet-client.crt" in log:
                    outputs[pod.spec.node_name] = log
        time.sleep(0.5)
    assert set(outputs) == {SOURCE_NODE, TARGET_NODE}, outputs
    for node in (SOURCE_NODE, TARGET_NODE):
        # hostPath means "this node": each node's marker landed in that node's own /var/lib/kubelet
        on_host = STATE / "nodes" / node / "kubelet" / "checkpoints" / f"lpm-substrate-{ns}"
        assert on_host.read_text().strip() == node
        on_host.unlink()
        agent_state = STATE / "nodes" / node / "lpm-agent" / f"lpm-substrate-{ns}"
        assert agent_state.read_text().strip() == node
        agent_state.unlink()
        assert "ca.crt" in outputs[node] and "v1.34" in outputs[node]


def test_pods_reach_each_other_across_nodes_by_pod_ip_and_through_a_service(kube, namespace):
    """host-gw routing in infra/local: a pod on lpm-node-1 reaches a pod on lpm-node-2, directly and via a
    ClusterIP Service (kube-proxy in the client's node), as a client of a moved pod will have to."""
    from kubernetes import client

    ns = namespace
    server = _pod("net-server", TARGET_NODE, COUNTER_IMAGE)
    server["metadata"]["labels"] = {"app": "net-server"}
    server["spec"]["containers"][0]["command"] = [
        "sh", "-c", 'while true; do echo "hello-from-$(hostname)" | nc -l -p 8080; done',
    ]  # fmt: skip
    kube.create_namespaced_pod(ns, server)
    _wait_running(kube, ns, "net-server")
    service = client.V1Service(
        metadata=client.V1ObjectMeta(name="net-server"),
        spec=client.V1ServiceSpec(selector={"app": "net-server"}, ports=[client.V1ServicePort(port=8080)]),
    )
    svc_ip = kube.create_namespaced_service(ns, service).spec.cluster_ip
    pod_ip = kube.read_namespaced_pod("net-server", ns).status.pod_ip
    clnt = _pod("net-client", SOURCE_NODE, COUNTER_IMAGE)
    clnt["spec"]["containers"][0]["command"] = [
        "sh", "-c",
        f'while true; do echo "pod:$(nc -w 2 {pod_ip} 8080 </dev/null) svc:$(nc -w 2 {svc_ip} 8080 </dev/null)"; '
        "sleep 0.5; done",
    ]  # fmt: skip
    kube.create_namespaced_pod(ns, clnt)
    _wait_running(kube, ns, "net-client")
    want = "pod:hello-from-net-server svc:hello-from-net-server"
    deadline, logs = time.time() + 60, ""
    while time.time() < deadline and want not in logs:
        logs = kube.read_namespaced_pod_log("net-client", ns)
        time.sleep(0.5)
    assert want in logs, logs[-500:]
