"""Every object of every overlay is accepted by a real kube-apiserver (`kubectl apply --dry-run=server`).

The server runs admission, defaulting and schema validation (CRD structural schemas, RBAC objects, pod specs),
which `kubectl kustomize` does not. Namespaced objects go into a throwaway namespace so a real LPM install
in lpm-system is never touched; cluster-scoped ones are dry-run only.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from unit.deploy.manifests import NAMESPACE, OVERLAYS, kubectl, render, repo_root


def _retarget(objs: list[dict[str, Any]], ns: str) -> list[dict[str, Any]]:
    text = yaml.safe_dump_all(objs)
    out = []
    for o in yaml.safe_load_all(text):
        meta = o["metadata"]
        if meta.get("namespace") == NAMESPACE:
            meta["namespace"] = ns
        if o["kind"] == "Namespace" and meta["name"] == NAMESPACE:
            meta["name"] = ns
        for s in o.get("subjects", []):
            if s.get("namespace") == NAMESPACE:
                s["namespace"] = ns
        claim = (o.get("spec") or {}).get("claimRef") if o["kind"] == "PersistentVolume" else None
        if claim and claim.get("namespace") == NAMESPACE:
            claim["namespace"] = ns
        out.append(o)
    return out


def _kubectl(kubeconfig: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [kubectl(), "--kubeconfig", str(kubeconfig), *args], input=stdin, capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def namespace(kubeconfig: Path) -> Iterator[str]:
    ns = f"lpm-dryrun-{uuid.uuid4().hex[:8]}"
    proc = _kubectl(kubeconfig, "create", "namespace", ns)
    assert proc.returncode == 0, proc.stderr
    yield ns
    _kubectl(kubeconfig, "delete", "namespace", ns, "--wait=false")


def _dry_run(kubeconfig: Path, objs: list[dict[str, Any]]) -> None:
    proc = _kubectl(
        kubeconfig,
        "apply",
        "--server-side",
        "--force-conflicts",
        "--field-manager=lpm-deploy-test",
        "--dry-run=server",
        "-o",
        "name",
        "-f",
        "-",
        stdin=yaml.safe_dump_all(objs),
    )
    assert proc.returncode == 0, f"the API server rejected objects:\n{proc.stderr}"
    accepted = set(proc.stdout.split())
    for o in objs:
        group = o["apiVersion"].split("/")[0] if "/" in o["apiVersion"] else ""
        ref = f"{o['kind'].lower()}{'.' + group if group else ''}/{o['metadata']['name']}"
        assert ref in accepted, f"{ref} missing from the server's answer: {sorted(accepted)}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_api_server_accepts_every_object_of_the_overlay(kubeconfig: Path, namespace: str, overlay: str) -> None:
    _dry_run(kubeconfig, _retarget(render(overlay), namespace))


def test_api_server_accepts_the_generated_mtls_secrets(kubeconfig: Path, namespace: str) -> None:
    script = repo_root() / "deploy" / "certs" / "generate.sh"
    out = subprocess.run(["bash", str(script), "-n", namespace], check=True, capture_output=True, text=True).stdout
    _dry_run(kubeconfig, [d for d in yaml.safe_load_all(out) if d])
