"""The checkpoint agent: a gRPC CheckpointService on every node (DaemonSet)."""
