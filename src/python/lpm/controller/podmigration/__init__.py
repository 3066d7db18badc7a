"""PodMigration: moves a running pod to another node (decide.py: what to do; handlers.py: doing it)."""
