"""Rules for messages that reach users (statuses, Events, CLI output), shared by the agent and the controller.

Node-internal paths (`/run/containerd/io.containerd.runtime.v2.task/k8s.io/<id>/criu-dump.log`) tell a user
nothing they can open, and leak a node's layout: they are cut to their last component.
"""

from __future__ import annotations

import posixpath
import re

# Absolute paths, and the node paths CRIU prints relative to the root ("var/lib/kubelet/pods/...").
_PATHS = re.compile(r"(?<![\w.:/-])(?:/|(?:var|run)/)(?:[\w.@~+:-]+/)+[\w.@~+:-]*")


def scrub_paths(text: str) -> str:
    """Replace absolute paths of two or more components (and node paths CRIU prints without the leading slash)
    by their last component: `/a/b/restore.log` -> `restore.log`."""
    return _PATHS.sub(lambda m: posixpath.basename(m.group(0).rstrip("/")) or "/", text)
