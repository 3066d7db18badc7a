"""The cluster's PKI (one CA, every component's certificate) and kubeconfigs."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

from lpm_local.config import API_PORT, HOST_IP, KUBECONFIG, NODES, PKI, SERVICE_API_IP, STATE
from lpm_local.host import log, run


def openssl(*args: str) -> None:
    run(["openssl", *args], quiet=True)


def make_cert(
    name: str,
    cn: str,
    org: str | None = None,
    *,
    server: bool = False,
    client: bool = False,
    sans: list[str] | None = None,
    ca: bool = False,
) -> None:
    crt, key = PKI / f"{name}.crt", PKI / f"{name}.key"
    if crt.exists() and key.exists():
        return
    subj = f"/CN={cn}" + (f"/O={org}" if org else "")
    openssl("genrsa", "-out", str(key), "2048")
    os.chmod(key, 0o600)
    if ca:
        openssl(
            "req",
            "-x509",
            "-new",
            "-nodes",
            "-key",
            str(key),
            "-sha256",
            "-days",
            "3650",
            "-subj",
            subj,
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,digitalSignature,keyEncipherment,keyCertSign",
            "-out",
            str(crt),
        )
        return
    csr = PKI / f"{name}.csr"
    ext = PKI / f"{name}.ext"
    eku = ",".join(x for x, on in (("serverAuth", server), ("clientAuth", client)) if on)
    lines = [
        "basicConstraints=critical,CA:FALSE",
        "keyUsage=critical,digitalSignature,keyEncipherment",
        f"extendedKeyUsage={eku}",
    ]
    if sans:
        lines.append("subjectAltName=" + ",".join(sans))
    ext.write_text("\n".join(lines) + "\n")
    openssl("req", "-new", "-key", str(key), "-subj", subj, "-out", str(csr))
    openssl(
        "x509",
        "-req",
        "-in",
        str(csr),
        "-CA",
        str(PKI / "ca.crt"),
        "-CAkey",
        str(PKI / "ca.key"),
        "-CAcreateserial",
        "-days",
        "3650",
        "-sha256",
        "-extfile",
        str(ext),
        "-out",
        str(crt),
    )
    csr.unlink()
    ext.unlink()


def kubeconfig_text(user: str, cert: str, server: str) -> str:
    def b64(p: Path) -> str:
        return base64.b64encode(p.read_bytes()).decode()

    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {"name": "lpm-local", "cluster": {"server": server, "certificate-authority-data": b64(PKI / "ca.crt")}}
            ],
            "users": [
                {
                    "name": user,
                    "user": {
                        "client-certificate-data": b64(PKI / f"{cert}.crt"),
                        "client-key-data": b64(PKI / f"{cert}.key"),
                    },
                }
            ],
            "contexts": [{"name": "lpm-local", "context": {"cluster": "lpm-local", "user": user}}],
            "current-context": "lpm-local",
        },
        indent=2,
    )


def write_secret(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def make_pki() -> None:
    PKI.mkdir(parents=True, exist_ok=True)
    os.chmod(PKI, 0o700)
    if not (PKI / "ca.crt").exists():
        log("generating cluster PKI (CA, apiserver, etcd, kubelet, service-account keys)")
    make_cert("ca", "kubernetes", ca=True)
    make_cert(
        "apiserver",
        "kube-apiserver",
        server=True,
        sans=[
            f"IP:{HOST_IP}",
            f"IP:{SERVICE_API_IP}",
            "IP:127.0.0.1",
            "DNS:kubernetes",
            "DNS:kubernetes.default",
            "DNS:kubernetes.default.svc",
            "DNS:kubernetes.default.svc.cluster.local",
            "DNS:localhost",
        ],
    )
    # kubeadm puts this identity in a cluster-admin group; the LPM agent uses this cert for the kubelet API.
    make_cert("apiserver-kubelet-client", "kube-apiserver-kubelet-client", "system:masters", client=True)
    make_cert("etcd-server", "etcd", server=True, client=True, sans=["IP:127.0.0.1", "DNS:localhost"])
    make_cert("apiserver-etcd-client", "kube-apiserver-etcd-client", client=True)
    make_cert("admin", "kubernetes-admin", "system:masters", client=True)
    make_cert("controller-manager", "system:kube-controller-manager", client=True)
    make_cert("scheduler", "system:kube-scheduler", client=True)
    make_cert("kube-proxy", "system:kube-proxy", client=True)
    for name, n in NODES.items():
        make_cert(f"kubelet-client-{name}", f"system:node:{name}", "system:nodes", client=True)
        make_cert(f"kubelet-server-{name}", name, server=True, sans=[f"IP:{n['ip']}", f"DNS:{name}"])
    if not (PKI / "sa.key").exists():
        openssl("genrsa", "-out", str(PKI / "sa.key"), "2048")
        openssl("rsa", "-in", str(PKI / "sa.key"), "-pubout", "-out", str(PKI / "sa.pub"))
    server = f"https://{HOST_IP}:{API_PORT}"
    write_secret(KUBECONFIG, kubeconfig_text("kubernetes-admin", "admin", server))
    write_secret(
        STATE / "controller-manager.conf",
        kubeconfig_text("system:kube-controller-manager", "controller-manager", server),
    )
    write_secret(STATE / "scheduler.conf", kubeconfig_text("system:kube-scheduler", "scheduler", server))
