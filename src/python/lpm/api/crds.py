"""Renders the CRD manifests from the models in `lpm.api.models`.

`python -m lpm.api.crds --write DIR` regenerates deploy/kustomize/base/crds/; a test fails when the
checked-in YAML differs from what this module renders, so models and manifests never drift apart.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import pathlib
import sys
import typing
from typing import Any

import yaml

from lpm.api import constants as c
from lpm.api.codec import model_fields, unwrap_optional
from lpm.api.fields import json_name
from lpm.api.models import RESOURCES, Resource

_SCALARS: dict[Any, dict[str, Any]] = {
    str: {"type": "string"},
    int: {"type": "integer", "format": "int64"},
    float: {"type": "number"},
    bool: {"type": "boolean"},
}
_CONSTRAINTS = ("pattern", "minLength", "maxLength", "minimum", "maximum", "format")


def schema_of(tp: Any) -> dict[str, Any]:
    """OpenAPI v3 (structural) schema of a model type."""
    tp, _ = unwrap_optional(tp)
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        props: dict[str, Any] = {}
        required: list[str] = []
        for f, ftp in model_fields(tp):  # type: ignore[arg-type]
            if f.name == "metadata":
                continue
            prop = schema_of(ftp)
            meta = f.metadata
            if meta.get("description"):
                prop["description"] = meta["description"]
            for key in _CONSTRAINTS:
                if key in meta:
                    prop[key] = meta[key]
            if "x_kubernetes_validations" in meta:
                prop["x-kubernetes-validations"] = [dict(rule) for rule in meta["x_kubernetes_validations"]]
            default = f.default
            if isinstance(default, enum.Enum):
                prop["default"] = default.value
            elif isinstance(default, (bool, int, float, str)):
                prop["default"] = default
            elif f.default_factory is not dataclasses.MISSING and dataclasses.is_dataclass(ftp):
                prop["default"] = {}
            if meta.get("required"):
                required.append(json_name(f))
            props[json_name(f)] = prop
        out: dict[str, Any] = {"type": "object", "properties": props}
        if required:
            out["required"] = required
        return out
    if origin is list:
        (item,) = typing.get_args(tp)
        return {"type": "array", "items": schema_of(item)}
    if origin is dict:
        _, val = typing.get_args(tp)
        return {"type": "object", "additionalProperties": schema_of(val)}
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return {"type": "string", "enum": [m.value for m in tp]}
    if tp in _SCALARS:
        return dict(_SCALARS[tp])
    raise TypeError(f"no schema for {tp!r}")


def render_crd(cls: type[Resource]) -> dict[str, Any]:
    kind, plural = cls.KIND, cls.PLURAL
    hints = typing.get_type_hints(cls)
    spec_schema = schema_of(hints["spec"])
    status_schema = schema_of(hints["status"])
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{c.GROUP}",
            "labels": {"app.kubernetes.io/name": "lpm", "app.kubernetes.io/part-of": "lpm"},
        },
        "spec": {
            "group": c.GROUP,
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": list(cls.SHORT_NAMES),
                "categories": ["lpm"],
            },
            "scope": "Namespaced" if cls.NAMESPACED else "Cluster",
            "versions": [
                {
                    "name": c.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        {**col, "priority": int(col["priority"])} if "priority" in col else dict(col)
                        for col in cls.PRINTER_COLUMNS
                    ],
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": cls.DESCRIPTION,
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec_schema,
                                "status": status_schema,
                            },
                        }
                    },
                }
            ],
        },
    }


def file_name(cls: type[Resource]) -> str:
    return f"{c.GROUP}_{cls.PLURAL}.yaml"


def render_all() -> dict[str, str]:
    """File name -> YAML text, including the kustomization listing them."""
    files = {
        file_name(cls): "# Generated by `python -m lpm.api.crds`; do not edit.\n"
        + yaml.safe_dump(render_crd(cls), sort_keys=False, width=120)
        for cls in RESOURCES
    }
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": sorted(files),
    }
    files["kustomization.yaml"] = "# Generated by `python -m lpm.api.crds`; do not edit.\n" + yaml.safe_dump(
        kustomization, sort_keys=False
    )
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Render LPM's CRD manifests from the API models.")
    parser.add_argument("--write", metavar="DIR", type=pathlib.Path, help="write the files into DIR")
    parser.add_argument("--check", metavar="DIR", type=pathlib.Path, help="exit 1 if DIR differs")
    args = parser.parse_args(argv)
    rendered = render_all()
    if args.write:
        args.write.mkdir(parents=True, exist_ok=True)
        for name, text in rendered.items():
            (args.write / name).write_text(text)
        return 0
    if args.check:
        stale = [n for n, t in rendered.items() if not (args.check / n).exists() or (args.check / n).read_text() != t]
        for name in stale:
            print(
                f"{args.check / name} is out of date; run python -m lpm.api.crds --write {args.check}", file=sys.stderr
            )
        return 1 if stale else 0
    for name, text in rendered.items():
        print(f"---\n# {name}\n{text}", end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
