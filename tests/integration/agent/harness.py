"""Real components for the agent's integration tests: runc containers, a kubelet stand-in, PKI, podman storage.

`RuncKubelet` serves the kubelet's checkpoint API over HTTPS with client-certificate auth and performs the
checkpoint for real: `runc checkpoint --leave-running` (CRIU) into a work dir, then a tar in the kubelet's
archive layout (checkpoint/, spec.dump, config.dump) in its checkpoint directory, answering
`{"items": ["/var/lib/kubelet/checkpoints/<file>.tar"]}` like the kubelet. It also serves `/pods` with
`containerID`s, so the agent's own cgroup locator runs unchanged. Faults are scripted per request.
"""

from __future__ import annotations

import datetime
import http.server
import ipaddress
import json
import os
import shutil
import ssl
import subprocess
import tarfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

NODE_CHECKPOINT_DIR = "/var/lib/kubelet/checkpoints"
NODE_TASK_DIR = "/run/containerd/io.containerd.runtime.v2.task"
COUNTER = "i=0; while true; do i=$((i+1)); echo $i > /tmp/count; sleep 0.05; done"
# The counter, plus an in-container client holding a TCP connection to an in-container server over 127.0.0.1.
# The server's stdin must stay open: busybox nc ends the connection at EOF on its stdin.
TCP_SERVER = "(sleep 1000000 | nc -l -p 7000 >/dev/null) & sleep 0.3; "
TCP_CLIENT = "(while true; do echo x; sleep 0.1; done | nc 127.0.0.1 7000 >/dev/null) & "
TCP_COUNTER = TCP_SERVER + TCP_CLIENT + COUNTER


def require_tools() -> None:
    missing = [t for t in ("runc", "criu", "podman") if shutil.which(t) is None]
    if missing or not Path("/bin/busybox").exists():
        raise RuntimeError(
            f"missing {missing or ['/bin/busybox']}: run tests/integration/agent/setup-host.sh as root first"
        )


def wait_for(predicate: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    """Poll until `predicate()` is truthy; the timeout only bounds a hang, nothing asserts on durations."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


# ---- PKI ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    # An agent's certificate as deploy/certs/generate.sh makes it: CN lpm-agent, serving and client use.
    agent_cert: Path = Path()
    agent_key: Path = Path()


def make_pki(directory: Path) -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("lpm-test-ca"))
        .issuer_name(name("lpm-test-ca"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    (directory / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))

    def leaf(cn: str, server: bool, client: bool = False) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(cn))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(
                x509.ExtendedKeyUsage(
                    [x509.oid.ExtendedKeyUsageOID.SERVER_AUTH if server else x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]
                    + ([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH] if server and client else [])
                ),
                critical=False,
            )
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost"), x509.DNSName(cn)]
                ),
                critical=False,
            )
        cert = builder.sign(ca_key, hashes.SHA256())
        crt, kp = directory / f"{cn}.crt", directory / f"{cn}.key"
        crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        write_key(key, kp)
        return crt, kp

    server_cert, server_key = leaf("server", True)
    client_cert, client_key = leaf("client", False)
    agent_cert, agent_key = leaf("lpm-agent", True, client=True)
    return Pki(directory / "ca.crt", server_cert, server_key, client_cert, client_key, agent_cert, agent_key)


# ---- runc containers ---------------------------------------------------------------------------------------


def make_bundle(bundle: Path, args: list[str], cgroups_path: str) -> Path:
    """A busybox-static rootfs bundle (runc spec defaults: own pid/net/ipc/uts/mount namespaces)."""
    rootfs = bundle / "rootfs"
    for d in ("bin", "tmp", "proc", "dev", "sys"):
        (rootfs / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2("/bin/busybox", rootfs / "bin" / "busybox")
    for applet in ("sh", "sleep", "echo", "cat", "dd", "head", "nc"):
        link = rootfs / "bin" / applet
        if not link.exists():
            link.symlink_to("busybox")
    subprocess.run(["runc", "spec", "--bundle", str(bundle)], check=True)
    config = json.loads((bundle / "config.json").read_text())
    config["process"]["terminal"] = False
    config["process"]["args"] = args
    config["root"]["readonly"] = False
    config["linux"]["cgroupsPath"] = cgroups_path
    (bundle / "config.json").write_text(json.dumps(config, indent=1))
    return bundle


def runc_state(container_id: str) -> dict[str, Any]:
    out = subprocess.run(["runc", "state", container_id], capture_output=True, text=True, check=True).stdout
    return dict(json.loads(out))


def runc_remove(container_id: str) -> None:
    subprocess.run(["runc", "delete", "--force", container_id], capture_output=True, check=False)


@dataclass
class RuncPod:
    """One pod with one container, run by runc in a cgroup laid out like the kubelet's cgroupfs driver."""

    namespace: str
    name: str
    uid: str
    container: str
    container_id: str
    bundle: Path
    cgroup_parent: str  # e.g. /lpm-test-<rand>/kubepods

    @property
    def count_file(self) -> Path:
        return self.bundle / "rootfs" / "tmp" / "count"

    def count(self) -> int:
        try:
            return int(self.count_file.read_text().strip() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    def freezer_state(self) -> str:
        path = Path("/sys/fs/cgroup/freezer") / self.cgroup_parent.lstrip("/") / f"pod{self.uid}" / self.container_id
        return (path / "freezer.state").read_text().strip()


def start_counter(
    tmp: Path, cgroup_parent: str, name: str = "counter", container: str = "app", script: str = COUNTER
) -> RuncPod:
    uid = str(uuid.uuid4())
    cid = f"lpmtest{uuid.uuid4().hex[:20]}"
    bundle = make_bundle(tmp / cid, ["/bin/sh", "-c", script], f"{cgroup_parent}/pod{uid}/{cid}")
    with open(os.devnull, "rb") as null_in, open(os.devnull, "wb") as null_out:
        # Detached, stdio on /dev/null (not a terminal: CRIU restores it by path). No pipes: the container
        # would inherit them and keep them open forever.
        subprocess.run(
            ["runc", "run", "--detach", "--bundle", str(bundle), cid],
            stdin=null_in,
            stdout=null_out,
            stderr=null_out,
            check=True,
        )
    pod = RuncPod("default", name, uid, container, cid, bundle, cgroup_parent)
    wait_for(lambda: pod.count() > 0, "the counter to start")
    return pod


def restore_from_image_dir(image_dir: Path, tmp: Path, cgroup_parent: str) -> RuncPod:
    """Restore a runc container from a checkpoint archive's contents (checkpoint/ + spec.dump)."""
    spec = json.loads((image_dir / "spec.dump").read_text())
    cid = f"lpmrestored{uuid.uuid4().hex[:16]}"
    uid = str(uuid.uuid4())
    bundle = make_bundle(tmp / cid, spec["process"]["args"], f"{cgroup_parent}/pod{uid}/{cid}")
    with open(os.devnull, "rb") as null_in, open(os.devnull, "wb") as null_out:
        done = subprocess.run(
            [
                "runc",
                "restore",
                "--detach",
                "--image-path",
                str(image_dir / "checkpoint"),
                "--work-path",
                str(tmp / f"{cid}-work"),
                "--bundle",
                str(bundle),
                cid,
            ],
            stdin=null_in,
            stdout=null_out,
            stderr=null_out,
            check=False,
        )
    if done.returncode != 0:
        log = tmp / f"{cid}-work" / "restore.log"
        tail = log.read_text()[-3000:] if log.exists() else ""
        raise AssertionError(f"runc restore failed ({done.returncode}):\n{tail}")
    return RuncPod("default", "restored", uid, "app", cid, bundle, cgroup_parent)


# ---- the kubelet stand-in ----------------------------------------------------------------------------------


@dataclass
class RuncKubelet:
    checkpoint_dir: Path  # what the node calls NODE_CHECKPOINT_DIR
    work_dir: Path
    pki: Pki
    pods: dict[tuple[str, str, str], RuncPod] = field(default_factory=dict)
    # Scripted answers, consumed one per checkpoint request before any real checkpoint: (status, body).
    faults: list[tuple[int, str]] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    port: int = 0

    @property
    def task_dir(self) -> Path:
        """Where the agent under test sees NODE_TASK_DIR (its --runtime-task-dir)."""
        return self.work_dir / "tasks"

    def add(self, pod: RuncPod) -> None:
        self.pods[(pod.namespace, pod.name, pod.container)] = pod

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def checkpoint_requests(self) -> list[str]:
        return [r for r in self.requests if r.startswith("POST /checkpoint/")]

    def _checkpoint(self, pod: RuncPod) -> str:
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        work = self.work_dir / f"{pod.container_id}-{uuid.uuid4().hex[:8]}"
        images = work / "checkpoint"
        images.mkdir(parents=True)
        done = subprocess.run(
            [
                "runc",
                "checkpoint",
                "--leave-running",
                "--image-path",
                str(images),
                "--work-path",
                str(work / "criu-work"),
                pod.container_id,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            # Like containerd: CRIU's log stays in the task's directory, and the error names it by its node path.
            kept = self.task_dir / "k8s.io" / pod.container_id / "criu-dump.log"
            kept.parent.mkdir(parents=True, exist_ok=True)
            log = work / "criu-work" / "dump.log"
            if log.exists():
                shutil.copyfile(log, kept)
            shutil.rmtree(work, ignore_errors=True)
            raise RuntimeError(
                f'checkpointing container "{pod.container_id}" failed: criu failed: type NOTIFY errno 0 path= '
                f"{NODE_TASK_DIR}/k8s.io/{pod.container_id}/criu-dump.log: {done.stderr.strip()[-200:]}"
            )
        (work / "spec.dump").write_text((pod.bundle / "config.json").read_text())
        (work / "config.dump").write_text(json.dumps({"id": pod.container_id, "name": pod.container}))
        name = f"checkpoint-{pod.name}_{pod.namespace}-{pod.container}-{stamp}.tar"
        with tarfile.open(self.checkpoint_dir / name, "w") as tar:
            for entry in ("checkpoint", "spec.dump", "config.dump"):
                tar.add(work / entry, arcname=entry)
        os.chmod(self.checkpoint_dir / name, 0o600)
        shutil.rmtree(work)
        return f"{NODE_CHECKPOINT_DIR}/{name}"

    def handle(self, method: str, path: str) -> tuple[int, str]:
        self.requests.append(f"{method} {path}")
        if method == "GET" and path == "/pods":
            items = [
                {
                    "metadata": {"name": p.name, "namespace": p.namespace, "uid": p.uid},
                    "status": {
                        "containerStatuses": [{"name": p.container, "containerID": f"containerd://{p.container_id}"}]
                    },
                }
                for p in self.pods.values()
            ]
            return 200, json.dumps({"kind": "PodList", "items": items})
        if method == "POST" and path.startswith("/checkpoint/"):
            if self.faults:
                return self.faults.pop(0)
            parts = path.split("?")[0].split("/")[2:]
            pod = self.pods.get((parts[0], parts[1], parts[2])) if len(parts) == 3 else None
            if pod is None:
                return 404, "404 page not found"
            return 200, json.dumps({"items": [self._checkpoint(pod)]})
        return 404, "404 page not found"

    def serve(self) -> http.server.ThreadingHTTPServer:
        kubelet = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self, method: str) -> None:
                try:
                    status, body = kubelet.handle(method, self.path)
                except Exception as exc:  # a CRIU failure is the kubelet's 500
                    status, body = 500, f"checkpoint failed: {exc}"
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json" if status == 200 else "text/plain")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                self._answer("POST")

            def do_GET(self) -> None:
                self._answer("GET")

            def log_message(self, *args: Any) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.pki.server_cert, self.pki.server_key)
        ctx.load_verify_locations(self.pki.ca)
        ctx.verify_mode = ssl.CERT_REQUIRED  # like the kubelet: x509 client authentication
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
        self.port = server.server_address[1]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server
