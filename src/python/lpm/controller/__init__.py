"""The LPM controller: PodMigration, PodCheckpoint and ContainerCheckpoint reconcilers."""
