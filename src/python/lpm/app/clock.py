"""Timestamps as the API server writes them (RFC 3339, UTC). Deciders get `now` passed in; only shells call `utcnow`."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC)


def fmt(ts: datetime) -> str:
    """RFC 3339 with microseconds, so sub-second phases still get a duration."""
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse(value: str | None) -> datetime | None:
    if not value:
        return None
    text = value.strip().replace("Z", "+00:00")
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def seconds_between(start: str | None, end: datetime) -> float | None:
    begun = parse(start)
    return None if begun is None else max(0.0, (end - begun).total_seconds())
