"""Checkpoint storage shared by the agent (writer, converter) and the controller (URIs, layout)."""
