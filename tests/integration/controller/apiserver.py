"""A real control plane for tests: etcd + kube-apiserver (Kubernetes v1.34 built from Go modules by
infra/local/deps/*.sh into $LPM_CACHE), no kubelet, scheduler or controller-manager.

Pods and Nodes are plain API objects here: tests create them and set their status through the status
subresource (a Node Ready, a pod Running), which is all the LPM controller looks at. There is no garbage
collector, so ownerReferences do not cascade: the controller's finalizers must clean up on their own.
"""

from __future__ import annotations

import datetime
import os
import shutil
import socket
import ssl
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml

K8S_VERSION = os.environ.get("K8S_VERSION", "v1.34.4")
ETCD_VERSION = os.environ.get("ETCD_VERSION", "v3.6.5")
TOKEN = "lpm-test-admin-token"


def cache_dir() -> Path:
    return Path(os.environ.get("LPM_CACHE", "/var/cache/lpm"))


def _find_deps_script(name: str) -> Path | None:
    env = os.environ.get("LPM_INFRA_DEPS")
    starts = [Path(env)] if env else []
    starts += [Path(__file__).resolve().parent, Path.cwd()]
    for start in starts:
        for parent in [start, *start.parents]:
            cand = parent / "infra" / "local" / "deps" / name
            if cand.exists():
                return cand
            if (parent / name).exists() and parent.name == "deps":
                return parent / name
    return None


def binary(component: str) -> Path:
    """Path of kube-apiserver or etcd; builds it with infra/local/deps when the cache lacks it."""
    if component == "etcd":
        path, script = cache_dir() / f"etcd-{ETCD_VERSION}" / "bin" / "etcd", "etcd.sh"
    else:
        path, script = cache_dir() / f"kubernetes-{K8S_VERSION}" / "bin" / component, "kubernetes.sh"
    if path.exists():
        return path
    deps = _find_deps_script(script)
    if deps is None:
        raise RuntimeError(
            f"{path} is missing and infra/local/deps/{script} was not found to build it "
            "(set LPM_CACHE to the build cache or LPM_INFRA_DEPS to infra/local/deps)"
        )
    proc = subprocess.run(["bash", str(deps)], capture_output=True, text=True, timeout=7200)
    if proc.returncode != 0 or not path.exists():
        raise RuntimeError(f"building {component} with {deps} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _service_account_key(path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        )
    )


@dataclass
class ControlPlane:
    workdir: Path
    url: str
    kubeconfig: Path
    etcd: subprocess.Popen[bytes]
    apiserver: subprocess.Popen[bytes]

    def stop(self) -> None:
        for proc in (self.apiserver, self.etcd):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()

    def get(self, path: str) -> bytes:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        req = urllib.request.Request(self.url + path, headers={"Authorization": f"Bearer {TOKEN}"})
        with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:  # - test-local URL
            return bytes(resp.read())

    def write_count(self) -> int:
        """Mutating requests the API server has served (from its own metrics), all clients together."""
        total = 0
        for line in self.get("/metrics").decode().splitlines():
            if line.startswith("apiserver_request_total{") and any(
                f'verb="{v}"' in line for v in ("POST", "PUT", "PATCH", "DELETE")
            ):
                total += int(float(line.rsplit(" ", 1)[1]))
        return total


def start(workdir: Path, timeout: float = 120.0) -> ControlPlane:
    workdir.mkdir(parents=True, exist_ok=True)
    etcd_bin, api_bin = binary("etcd"), binary("kube-apiserver")
    client_port, peer_port, api_port = free_port(), free_port(), free_port()
    logs = workdir / "logs"
    logs.mkdir(exist_ok=True)
    etcd = subprocess.Popen(
        [
            str(etcd_bin),
            "--name=test",
            f"--data-dir={workdir / 'etcd'}",
            f"--listen-client-urls=http://127.0.0.1:{client_port}",
            f"--advertise-client-urls=http://127.0.0.1:{client_port}",
            f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
            f"--initial-cluster=test=http://127.0.0.1:{peer_port}",
            "--unsafe-no-fsync=true",
            "--log-level=warn",
        ],
        stdout=(logs / "etcd.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    sa_key = workdir / "sa.key"
    _service_account_key(sa_key)
    tokens = workdir / "tokens.csv"
    tokens.write_text(f'{TOKEN},admin,admin,"system:masters"\n')
    apiserver = subprocess.Popen(
        [
            str(api_bin),
            f"--etcd-servers=http://127.0.0.1:{client_port}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={api_port}",
            f"--cert-dir={workdir / 'certs'}",
            f"--token-auth-file={tokens}",
            "--authorization-mode=RBAC",
            "--service-account-issuer=https://kubernetes.default.svc",
            f"--service-account-key-file={sa_key}",
            f"--service-account-signing-key-file={sa_key}",
            "--service-cluster-ip-range=10.96.0.0/16",
            "--disable-admission-plugins=ServiceAccount",
            "--enable-priority-and-fairness=false",
            "--profiling=false",
            "--v=0",
        ],
        stdout=(logs / "kube-apiserver.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    url = f"https://127.0.0.1:{api_port}"
    kubeconfig = workdir / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "test", "cluster": {"server": url, "insecure-skip-tls-verify": True}}],
                "users": [{"name": "admin", "user": {"token": TOKEN}}],
                "contexts": [{"name": "test", "context": {"cluster": "test", "user": "admin"}}],
                "current-context": "test",
            }
        )
    )
    plane = ControlPlane(workdir, url, kubeconfig, etcd, apiserver)
    deadline = time.monotonic() + timeout
    while True:
        for name, proc in (("etcd", etcd), ("kube-apiserver", apiserver)):
            if proc.poll() is not None:
                tail = (logs / f"{name}.log").read_text(errors="replace")[-3000:]
                plane.stop()
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{tail}")
        try:
            if plane.get("/readyz") == b"ok":
                return plane
        except OSError:
            pass
        if time.monotonic() > deadline:
            plane.stop()
            raise RuntimeError(f"kube-apiserver not ready after {timeout}s; see {logs}")
        time.sleep(0.5)


def crd_dir() -> Path:
    """deploy/kustomize/base/crds, from the Pants sandbox or the source tree."""
    for start in (Path.cwd(), Path(__file__).resolve().parent):
        for parent in [start, *start.parents]:
            cand = parent / "deploy" / "kustomize" / "base" / "crds"
            if (cand / "kustomization.yaml").exists():
                return cand
    raise FileNotFoundError("deploy/kustomize/base/crds not found (is the :crds files target a dependency?)")


def install_crds(api_client: object, timeout: float = 60.0) -> list[str]:
    from kubernetes import client

    ext = client.ApiextensionsV1Api(api_client)
    names = []
    folder = crd_dir()
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    for fname in kustomization["resources"]:
        crd = yaml.safe_load((folder / fname).read_text())
        ext.create_custom_resource_definition(crd)
        names.append(crd["metadata"]["name"])
    deadline = time.monotonic() + timeout
    for name in names:
        while True:
            got = ext.read_custom_resource_definition(name)
            conds = {c.type: c.status for c in (got.status.conditions or [])}
            if conds.get("Established") == "True":
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"CRD {name} not Established: {conds}")
            time.sleep(0.2)
    return names


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def keep_logs(plane: ControlPlane, dest: Path) -> None:
    shutil.copytree(plane.workdir / "logs", dest, dirs_exist_ok=True)
