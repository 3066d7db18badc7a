"""The checked-in CRD manifests are exactly what the models render (no drift between code and deploy/)."""

from __future__ import annotations

from pathlib import Path

from lpm.api.crds import render_all


def _crd_dir() -> Path:
    for start in (Path.cwd(), Path(__file__).resolve().parent):
        for parent in [start, *start.parents]:
            cand = parent / "deploy" / "kustomize" / "base" / "crds"
            if (cand / "kustomization.yaml").exists():
                return cand
    raise FileNotFoundError("deploy/kustomize/base/crds")


def test_checked_in_crds_match_the_models():
    folder = _crd_dir()
    rendered = render_all()
    stale = [
        name for name, text in rendered.items() if not (folder / name).exists() or (folder / name).read_text() != text
    ]
    assert (
        not stale
    ), f"{stale} out of date; run: cd src/python && python3 -m lpm.api.crds --write ../../deploy/kustomize/base/crds"


def test_no_stray_crd_files():
    folder = _crd_dir()
    assert {p.name for p in folder.glob("*.yaml")} == set(render_all())
