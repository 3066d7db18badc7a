"""Migration metrics for Prometheus: what an operator's dashboards and SLOs are written against.

Recorded once per migration, by the shell, when the status write that makes it Completed or Failed lands (the
write is guarded by resourceVersion, so a migration is counted once however many cycles looked at it).
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from lpm.api.models import MigrationPhase, PodMigrationStatus
from lpm.app import clock

# Seconds: small pods migrate in a few, big ones in tens; the long tail is timeouts and rollbacks.
_BUCKETS = (0.25, 0.5, 1, 2, 3, 5, 8, 13, 20, 30, 45, 60, 90, 120, 180, 300, 600, 1200)

FINISHED = Counter(
    "lpm_migrations_finished_total", "PodMigrations that reached Completed or Failed", ["phase", "reason"]
)
DURATION = Histogram(
    "lpm_migration_duration_seconds", "Start to Completed/Failed, per outcome", ["phase"], buckets=_BUCKETS
)
PHASE = Histogram(
    "lpm_migration_phase_duration_seconds",
    "Time finished migrations spent in each phase",
    ["phase"],
    buckets=_BUCKETS,
)
FROZEN = Histogram(
    "lpm_migration_source_frozen_seconds",
    "Completed migrations: source frozen until the restored pod ran (the workload's downtime, at most)",
    buckets=_BUCKETS,
)


def migration_status_written(old: PodMigrationStatus, new: PodMigrationStatus) -> None:
    """Observe a migration that this write finished; anything else is not news."""
    if old.phase.terminal or not new.phase.terminal:
        return
    end = clock.parse(new.completion_time)
    FINISHED.labels(new.phase.value, new.reason or "Unknown").inc()
    total = clock.seconds_between(new.start_time, end) if end else None
    if total is not None:
        DURATION.labels(new.phase.value).observe(total)
    for phase, seconds in new.phase_durations_seconds.items():
        PHASE.labels(phase).observe(seconds)
    frozen = clock.seconds_between(new.frozen_at, end) if end else None
    if new.phase is MigrationPhase.COMPLETED and frozen is not None:
        FROZEN.observe(frozen)
