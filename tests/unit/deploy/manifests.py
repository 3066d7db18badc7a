"""Renders LPM's kustomizations with the real kubectl (kustomize built in) for the deploy tests."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import yaml

OVERLAYS = ("nfs", "local", "local-hostpath", "vagrant")
NAMESPACE = "lpm-system"


def repo_root() -> Path:
    """The directory holding deploy/ (the Pants sandbox root, or the checkout when run by hand)."""
    for start in (Path.cwd(), Path(__file__).resolve()):
        for cand in (start, *start.parents):
            if (cand / "deploy" / "kustomization.yaml").exists():
                return cand
    raise FileNotFoundError("deploy/kustomization.yaml not found (is //deploy:manifests a dependency?)")


def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        raise FileNotFoundError("kubectl is not on PATH (Debian: /usr/bin/kubectl; pants passes PATH to tests)")
    return path


def kustomization_dir(name: str) -> Path:
    """`deploy` for the top-level kustomization, else the overlay of that name."""
    root = repo_root() / "deploy"
    return root if name == "deploy" else root / "kustomize" / "overlays" / name


@cache
def render_text(name: str) -> str:
    proc = subprocess.run(
        [kubectl(), "kustomize", str(kustomization_dir(name))], capture_output=True, text=True, timeout=120
    )
    if proc.returncode != 0:
        raise AssertionError(f"kubectl kustomize {name} failed: {proc.stderr.strip()}")
    return proc.stdout


def render(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(render_text(name)) if d]


def of_kind(objs: list[dict[str, Any]], kind: str) -> Iterator[dict[str, Any]]:
    return (o for o in objs if o["kind"] == kind)


def one(objs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]
