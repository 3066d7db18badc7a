"""Conversion between the CRD models and the JSON objects the API server stores.

Unknown fields are ignored on the way in (a newer CRD version must not break an older controller) and
empty optional fields are left out on the way out, so a status patch never clears what it did not set.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import types
import typing
from typing import Any, TypeVar, Union

from lpm.api import constants as c
from lpm.api.fields import json_name

T = TypeVar("T")


class DecodeError(ValueError):
    """An object from the API server that does not fit the model."""


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def unwrap_optional(tp: Any) -> tuple[Any, bool]:
    """`Optional[X]` -> (X, True); anything else -> (tp, False)."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def model_fields(cls: type) -> list[tuple[dataclasses.Field[Any], Any]]:
    """(field, resolved type) of a model, skipping ClassVars."""
    hints = _hints(cls)
    return [(f, hints[f.name]) for f in dataclasses.fields(cls)]


def encode(value: Any) -> Any:
    """Model -> JSON-ready value."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out: dict[str, Any] = {}
        kind = getattr(type(value), "KIND", None)  # a custom resource (models.Resource) names its kind
        if kind is not None:
            out["apiVersion"] = c.API_VERSION
            out["kind"] = kind
        for f, _ in model_fields(type(value)):
            v = getattr(value, f.name)
            if v is None:
                continue
            out[json_name(f)] = encode(v)
        return out
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, list):
        return [encode(v) for v in value]
    if isinstance(value, dict):
        return {k: encode(v) for k, v in value.items()}
    return value


def decode(cls: type[T], data: Any, path: str = "") -> T:
    """JSON object -> model of type `cls`. Raises DecodeError naming the offending path."""
    return typing.cast(T, _decode(cls, data, path or getattr(cls, "KIND", cls.__name__)))


def _decode(tp: Any, data: Any, path: str) -> Any:
    tp, optional = unwrap_optional(tp)
    if data is None:
        if optional:
            return None
        if dataclasses.is_dataclass(tp):
            data = {}
        else:
            raise DecodeError(f"{path}: required value missing")
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(data, dict):
            raise DecodeError(f"{path}: expected an object, got {type(data).__name__}")
        kwargs: dict[str, Any] = {}
        for f, ftp in model_fields(tp):  # type: ignore[arg-type]
            key = json_name(f)
            if key in data:
                kwargs[f.name] = _decode(ftp, data[key], f"{path}.{key}")
            elif f.metadata.get("required"):
                raise DecodeError(f"{path}.{key}: required field missing")
        return tp(**kwargs)  # type: ignore[operator]
    if origin is list:
        if not isinstance(data, list):
            raise DecodeError(f"{path}: expected a list, got {type(data).__name__}")
        (item,) = typing.get_args(tp)
        return [_decode(item, v, f"{path}[{i}]") for i, v in enumerate(data)]
    if origin is dict:
        if not isinstance(data, dict):
            raise DecodeError(f"{path}: expected an object, got {type(data).__name__}")
        _, val = typing.get_args(tp)
        return {str(k): _decode(val, v, f"{path}.{k}") for k, v in data.items()}
    if tp is Any:
        return data
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(data)
        except ValueError:
            allowed = ", ".join(str(m.value) for m in tp)
            raise DecodeError(f"{path}: {data!r} is not one of {allowed}") from None
    if tp is float and isinstance(data, (int, float)) and not isinstance(data, bool):
        return float(data)
    if tp in (str, int, bool) and type(data) is tp:
        return data
    raise DecodeError(f"{path}: expected {getattr(tp, '__name__', tp)}, got {type(data).__name__}")
