"""Migration metrics: observed once, when a status write finishes a migration."""

from __future__ import annotations

from prometheus_client import REGISTRY

from lpm.api.models import MigrationPhase, PodMigrationStatus
from lpm.controller.metrics import migration_status_written


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def finished(phase: MigrationPhase, reason: str) -> PodMigrationStatus:
    return PodMigrationStatus(
        phase=phase,
        reason=reason,
        start_time="2026-01-01T12:00:00Z",
        frozen_at="2026-01-01T12:00:01Z",
        completion_time="2026-01-01T12:00:05.5Z",
        phase_durations_seconds={"Checkpointing": 1.5, "Restoring": 2.0},
    )


def test_a_completed_migration_is_counted_once_with_its_durations() -> None:
    count = sample("lpm_migrations_finished_total", phase="Completed", reason="Completed")
    total = sample("lpm_migration_duration_seconds_sum", phase="Completed")
    frozen = sample("lpm_migration_source_frozen_seconds_sum")
    restoring = sample("lpm_migration_phase_duration_seconds_sum", phase="Restoring")
    done = finished(MigrationPhase.COMPLETED, "Completed")
    migration_status_written(PodMigrationStatus(phase=MigrationPhase.RESTORING), done)
    migration_status_written(done, done)  # a later write of an already finished migration is not news
    assert sample("lpm_migrations_finished_total", phase="Completed", reason="Completed") == count + 1
    assert sample("lpm_migration_duration_seconds_sum", phase="Completed") == total + 5.5
    assert sample("lpm_migration_source_frozen_seconds_sum") == frozen + 4.5
    assert sample("lpm_migration_phase_duration_seconds_sum", phase="Restoring") == restoring + 2.0


def test_a_failure_is_counted_by_reason_and_progress_is_not_counted() -> None:
    frozen = sample("lpm_migration_source_frozen_seconds_count")
    before = sample("lpm_migrations_finished_total", phase="Failed", reason="CheckpointFailed")
    migration_status_written(
        PodMigrationStatus(phase=MigrationPhase.ROLLING_BACK), finished(MigrationPhase.FAILED, "CheckpointFailed")
    )
    migration_status_written(
        PodMigrationStatus(phase=MigrationPhase.FREEZING), PodMigrationStatus(phase=MigrationPhase.CHECKPOINTING)
    )
    assert sample("lpm_migrations_finished_total", phase="Failed", reason="CheckpointFailed") == before + 1
    assert sample("lpm_migration_source_frozen_seconds_count") == frozen, "a failed move had no downtime to count"
