"""ContainerCheckpoint: the agent on the pod's node checkpoints one container; a bound ContainerCheckpointContent."""
