"""deploy/certs/generate.sh makes the two mTLS Secrets the manifests mount."""

from __future__ import annotations

import base64
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from unit.deploy.manifests import one, render, repo_root


@pytest.fixture(scope="module")
def secrets() -> list[dict]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    script = repo_root() / "deploy" / "certs" / "generate.sh"
    out = subprocess.run(["bash", str(script), "-n", "lpm-system"], check=True, capture_output=True, text=True)
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def _write(secret: dict, d: Path) -> dict[str, Path]:
    paths = {}
    for key, value in secret["data"].items():
        paths[key] = d / f"{secret['metadata']['name']}-{key}"
        paths[key].write_bytes(base64.b64decode(value))
    return paths


def test_secrets_are_the_ones_the_pods_mount(secrets: list[dict]) -> None:
    objs = render("nfs")
    wanted = set()
    for kind, name in (("Deployment", "lpm-controller"), ("DaemonSet", "lpm-agent")):
        spec = one(objs, kind, name)["spec"]["template"]["spec"]
        wanted |= {v["secret"]["secretName"] for v in spec["volumes"] if "secret" in v}
    assert {s["metadata"]["name"] for s in secrets} == wanted
    for s in secrets:
        assert s["metadata"]["namespace"] == "lpm-system"
        assert set(s["data"]) == {"tls.crt", "tls.key", "ca.crt"}


def test_agent_and_controller_certificates_chain_to_the_same_ca(secrets: list[dict], tmp_path: Path) -> None:
    by_name = {s["metadata"]["name"]: _write(s, tmp_path) for s in secrets}
    agent, controller = by_name["lpm-agent-tls"], by_name["lpm-controller-agent-client"]
    assert agent["ca.crt"].read_bytes() == controller["ca.crt"].read_bytes()
    for cert, purpose in ((agent["tls.crt"], "sslserver"), (controller["tls.crt"], "sslclient")):
        subprocess.run(
            ["openssl", "verify", "-CAfile", str(agent["ca.crt"]), "-purpose", purpose, str(cert)], check=True
        )
    text = subprocess.run(
        ["openssl", "x509", "-in", str(agent["tls.crt"]), "-noout", "-ext", "subjectAltName"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert "DNS:lpm-agent" in text  # the controller's LPM_AGENT_TLS_SERVER_NAME


def test_each_run_makes_a_new_ca(secrets: list[dict]) -> None:
    script = repo_root() / "deploy" / "certs" / "generate.sh"
    again = subprocess.run(["bash", str(script)], check=True, capture_output=True, text=True).stdout
    assert secrets[0]["data"]["ca.crt"] not in again
