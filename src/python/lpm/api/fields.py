"""Field metadata for the CRD models: the one place where a model field's JSON name and schema live."""

from __future__ import annotations

import dataclasses
from typing import Any, TypedDict


class FieldSchema(TypedDict, total=False):
    description: str
    pattern: str
    minLength: int
    maxLength: int
    minimum: float
    maximum: float
    format: str
    default: Any
    x_kubernetes_validations: list[dict[str, str]]
    immutable: bool
    required: bool
    json: str


def spec_field(
    description: str,
    *,
    default: Any = dataclasses.MISSING,
    default_factory: Any = dataclasses.MISSING,
    required: bool = False,
    **schema: Any,
) -> Any:
    """A dataclass field carrying its OpenAPI description and constraints (see FieldSchema)."""
    metadata: FieldSchema = {"description": description, "required": required}
    metadata.update(schema)  # type: ignore[typeddict-item]
    if default is dataclasses.MISSING and default_factory is dataclasses.MISSING and not required:
        default = None
    kwargs: dict[str, Any] = {"metadata": metadata}
    if default is not dataclasses.MISSING:
        kwargs["default"] = default
    if default_factory is not dataclasses.MISSING:
        kwargs["default_factory"] = default_factory
    return dataclasses.field(**kwargs)


def json_name(field: dataclasses.Field[Any]) -> str:
    """camelCase JSON name of a snake_case field, unless the field names one explicitly."""
    explicit = field.metadata.get("json")
    if explicit:
        return str(explicit)
    head, *rest = field.name.split("_")
    return head + "".join(_INITIALISMS.get(part, part[:1].upper() + part[1:]) for part in rest)


# Kubernetes API conventions spell these in capitals inside camelCase names: podUID, checkpointID, artifactURI.
_INITIALISMS = {"uid": "UID", "id": "ID", "uri": "URI"}
