"""Kubernetes name rules (DNS-1123, UIDs) and LPM's deterministic child-object names."""

from __future__ import annotations

import hashlib
import re
from typing import Final

DNS1123_LABEL_MAX: Final = 63
DNS1123_SUBDOMAIN_MAX: Final = 253
DNS1123_LABEL_PATTERN: Final = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS1123_SUBDOMAIN_PATTERN: Final = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# Kubernetes UIDs are RFC 4122 UUIDs in their canonical lower-case form.
UID_PATTERN: Final = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"

_LABEL = re.compile(DNS1123_LABEL_PATTERN)
_SUBDOMAIN = re.compile(DNS1123_SUBDOMAIN_PATTERN)
_UID = re.compile(UID_PATTERN)


class InvalidName(ValueError):
    """A name or identifier that Kubernetes (or LPM's storage layout) would not accept."""


def is_dns1123_label(value: str) -> bool:
    return len(value) <= DNS1123_LABEL_MAX and _LABEL.fullmatch(value) is not None


def is_dns1123_subdomain(value: str) -> bool:
    return len(value) <= DNS1123_SUBDOMAIN_MAX and _SUBDOMAIN.fullmatch(value) is not None


def is_uid(value: str) -> bool:
    return _UID.fullmatch(value) is not None


def require_label(what: str, value: str) -> str:
    if not is_dns1123_label(value):
        raise InvalidName(
            f"{what} {value!r} is not a valid DNS-1123 label "
            f"(lower-case alphanumerics and '-', at most {DNS1123_LABEL_MAX} characters)"
        )
    return value


def require_subdomain(what: str, value: str) -> str:
    if not is_dns1123_subdomain(value):
        raise InvalidName(
            f"{what} {value!r} is not a valid DNS-1123 subdomain "
            f"(lower-case alphanumerics, '-' and '.', at most {DNS1123_SUBDOMAIN_MAX} characters)"
        )
    return value


def require_uid(what: str, value: str) -> str:
    if not is_uid(value):
        raise InvalidName(f"{what} {value!r} is not a Kubernetes UID (canonical lower-case UUID)")
    return value


def _digest(*parts: str, length: int = 10) -> str:
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:length]


def child_name(parent: str, *suffix: str, limit: int = DNS1123_SUBDOMAIN_MAX) -> str:
    """Deterministic, valid name for an object owned by `parent`: `<parent>-<suffix...>`, hashed if too long.

    Deterministic names make creation idempotent: a restarted controller recreates the same name and gets
    AlreadyExists instead of a second object.
    """
    name = "-".join((parent, *suffix))
    if len(name) <= limit:
        return name
    tail = _digest(parent, *suffix)
    return f"{name[: limit - len(tail) - 1].rstrip('-.')}-{tail}"


def content_name(kind_prefix: str, namespace: str, name: str, uid: str) -> str:
    """Cluster-scoped *Content names: unique across namespaces, stable for one bound object."""
    return child_name(f"{kind_prefix}-{_digest(namespace, name, uid, length=16)}", limit=DNS1123_LABEL_MAX)


def checkpoint_id_for(created_at_rfc3339: str, uid: str) -> str:
    """The seed's timestamp-based checkpoint ID, derived from the PodCheckpoint so every restart agrees.

    `2026-11-24T07:32:00Z` + uid -> `20261124t073200z-1a2b3c4d`, a DNS-1123 label.
    """
    stamp = "".join(ch for ch in created_at_rfc3339.lower() if ch.isalnum())
    return require_label("checkpoint ID", f"{stamp}-{uid.replace('-', '')[:8]}")
