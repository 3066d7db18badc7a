"""deploy/certs/generate.sh makes the TLS Secrets the manifests mount."""

from __future__ import annotations

import base64
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from unit.deploy.manifests import one, render, repo_root

from lpm.storage.sealing import KeyDirectory


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
    # The one other Secret is the checkpoint keys' (deploy/keys/checkpoint-keys.sh, tested below).
    assert {s["metadata"]["name"] for s in secrets} == wanted - {"lpm-checkpoint-keys"}
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


def test_webhook_certificate_names_the_service_the_webhook_configurations_call(
    secrets: list[dict], tmp_path: Path
) -> None:
    hook = _write(next(s for s in secrets if s["metadata"]["name"] == "lpm-controller-webhook-tls"), tmp_path)
    subprocess.run(
        ["openssl", "verify", "-CAfile", str(hook["ca.crt"]), "-purpose", "sslserver", str(hook["tls.crt"])],
        check=True,
    )
    text = subprocess.run(
        ["openssl", "x509", "-in", str(hook["tls.crt"]), "-noout", "-ext", "subjectAltName"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    objs = render("nfs")
    for kind, name in (
        ("MutatingWebhookConfiguration", "lpm-replacement"),
        ("ValidatingWebhookConfiguration", "lpm-eviction"),
    ):
        svc = one(objs, kind, name)["webhooks"][0]["clientConfig"]["service"]
        one(objs, "Service", svc["name"])  # the Service exists
        assert f"DNS:{svc['name']}.{svc['namespace']}.svc" in text


def test_each_run_makes_a_new_ca(secrets: list[dict]) -> None:
    script = repo_root() / "deploy" / "certs" / "generate.sh"
    again = subprocess.run(["bash", str(script)], check=True, capture_output=True, text=True).stdout
    assert secrets[0]["data"]["ca.crt"] not in again


def test_checkpoint_keys_secret_is_the_one_the_agents_mount_and_loads_as_their_key_ring(tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    script = repo_root() / "deploy" / "keys" / "checkpoint-keys.sh"
    made = [
        yaml.safe_load(
            subprocess.run(
                ["bash", str(script), "new", "-n", "lpm-system"], check=True, capture_output=True, text=True
            ).stdout
        )
        for _ in range(2)
    ]
    agent = one(render("nfs"), "DaemonSet", "lpm-agent")["spec"]["template"]["spec"]
    volume = next(v for v in agent["volumes"] if v["name"] == "checkpoint-keys")
    mount = next(m for m in agent["containers"][0]["volumeMounts"] if m["name"] == "checkpoint-keys")
    env = {e["name"]: e.get("value") for e in agent["containers"][0]["env"]}
    assert volume["secret"]["secretName"] == made[0]["metadata"]["name"] == "lpm-checkpoint-keys"
    assert env["LPM_ENCRYPTION_KEYS"] == mount["mountPath"] and volume["secret"]["defaultMode"] == 0o400
    directory = tmp_path / "keys"
    directory.mkdir()
    _write_plain(made[0], directory)
    ring = KeyDirectory(directory).ring()
    assert ring.active is not None and ring.active in ring.keys and len(ring.keys) == 1
    (second,) = (k for k in made[1]["data"] if k != "active")
    assert base64.b64decode(made[1]["data"][second]) != ring.keys[ring.active]  # a fresh key every time


def _write_plain(secret: dict, d: Path) -> None:
    """As the kubelet mounts a Secret: one file per key, holding the decoded value."""
    for key, value in secret["data"].items():
        (d / key).write_bytes(base64.b64decode(value))
