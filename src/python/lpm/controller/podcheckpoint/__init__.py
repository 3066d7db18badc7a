"""PodCheckpoint: one ContainerCheckpoint per container, then a sealed, bound PodCheckpointContent."""
