"""CRIU's own words: find the log a failed dump or restore left on this node, pick its first real error lines,
and turn them into a message a user can act on.

Why: the runtime reports a CRIU failure only as `criu failed: type NOTIFY errno 0 path= <node path>/criu-dump.log`
(containerd's checkpoint) or `... log file: <node path>/restore.log`. The path is inside the node (no use to
a user) and the file goes away with the container, while the reason (`Connected TCP socket, consider using
--tcp-established option`) is only in there. The agent reads it while it still exists, through a read-only
mount of the runtime's task directory, and only there: a path named in an error message is never opened
unless it lies inside that directory.

Messages that leave this module never carry a node-internal path.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from lpm.api.messages import scrub_paths

# containerd's runc shim keeps each task's bundle (and CRIU's dump log) here while the container exists.
CONTAINERD_TASK_DIR: Final = "/run/containerd/io.containerd.runtime.v2.task"
MAX_LINES: Final = 3
MAX_LOG_BYTES: Final = 4 << 20

_LOG_PATH = re.compile(r"(?:path=|log file:)\s*(/\S+\.log)")
# "(00.012345) Error (criu/sk-inet.c:200): inet: Connected TCP socket, consider using --tcp-established option."
_ERROR = re.compile(r"^\(\s*[\d.]+\)\s+(?:\d+:\s+)?Error\s+\(([^)]*)\):\s*(.*)$")
# Lines that are always there on some hosts and are never the cause.
_NOISE: Final = (
    "Can't setup RLIMIT_NOFILE for self",
    "rlimit: Can't setup",
)


@dataclass(frozen=True)
class Hint:
    pattern: re.Pattern[str]
    cause: str  # CamelCase, goes into reasons
    advice: str
    certain: bool  # repeating the same dump cannot succeed


HINTS: Final = (
    Hint(
        re.compile(r"Connected TCP socket|--tcp-established", re.I),
        "TCPConnectionOpen",
        "the pod holds an established TCP connection, and the source node's CRIU configuration for runc "
        "(/etc/criu/runc.conf) lacks tcp-established: install LPM's node configuration there "
        "(deploy/node/lpm-runc-node.sh install), or close the connection first; spec.options.tcpEstablished "
        "is true unless the migration refuses such pods",
        True,
    ),
    Hint(
        re.compile(r"In-flight connection", re.I),
        "ConnectionNotAccepted",
        "a listening socket holds connections the application has not accepted yet; CRIU cannot dump those: "
        "migrate when the server has accepted them (a frozen server never will)",
        True,
    ),
    Hint(
        re.compile(r"\btty\b|\bpty\b|/dev/pts", re.I),
        "TerminalAttached",
        "a container has a terminal (tty: true or stdin: true); CRIU cannot move it: run the pod without a tty",
        True,
    ),
    Hint(
        re.compile(r"Can't open file|No such file or directory|Can't lookup mount|ghost|has bad size", re.I),
        "OpenFileCannotMove",
        "a process holds a file open whose contents are not on the target node (an emptyDir or other node-local "
        "volume); close it before migrating, or keep that data on a volume both nodes can reach",
        True,
    ),
    Hint(
        re.compile(r"Can't dump file .* of that type", re.I),
        "UnsupportedFile",
        "a process holds a kind of file CRIU cannot dump (e.g. a perf_event counter of a profiler, an io_uring "
        "or a bpf map); stop what holds it (a profiling or tracing agent) before migrating",
        True,
    ),
    Hint(
        re.compile(r"unix.*socket|External socket", re.I),
        "ExternalSocket",
        "a process holds a unix socket whose peer is outside the pod; CRIU cannot carry it over",
        True,
    ),
)


@dataclass(frozen=True)
class CriuFailure:
    """What CRIU said, for a status. `lines` are its first error lines without node paths."""

    lines: tuple[str, ...]
    cause: str = ""
    advice: str = ""
    certain: bool = False

    def summary(self) -> str:
        said = "; ".join(self.lines) if self.lines else "CRIU left no readable log"
        return f"CRIU: {said}" + (f". Hint: {self.advice}" if self.advice else "")


def log_path_in(message: str) -> str | None:
    """The CRIU log a runtime's error names, as a path on the node (`criu failed: ... path= /.../x.log`)."""
    found = _LOG_PATH.search(message)
    return found.group(1) if found else None


def local_path(node_path: str, node_dir: str, mounted_at: Path) -> Path | None:
    """Where this agent reads `node_path`, which must lie inside `node_dir` (mounted at `mounted_at`)."""
    normal = posixpath.normpath(node_path)
    prefix = node_dir.rstrip("/")
    if not normal.startswith(prefix + "/"):
        return None
    return mounted_at / normal[len(prefix) + 1 :]


def error_lines(log_text: str, limit: int = MAX_LINES) -> tuple[str, ...]:
    """CRIU's first error lines, in order, without the known noise and without timestamps or paths."""
    out: list[str] = []
    for raw in log_text.splitlines():
        m = _ERROR.match(raw.strip())
        if not m:
            continue
        text = m.group(2).strip().rstrip(".")
        if not text or any(n in text for n in _NOISE):
            continue
        line = scrub_paths(text)
        if line not in out:
            out.append(line)
        if len(out) >= limit:
            break
    return tuple(out)


def explain(lines: tuple[str, ...], runtime_message: str = "") -> CriuFailure:
    """Attach the first matching hint (looking at CRIU's lines first, then at the runtime's message)."""
    for text in (*lines, runtime_message):
        for hint in HINTS:
            if hint.pattern.search(text):
                return CriuFailure(lines, hint.cause, hint.advice, hint.certain)
    return CriuFailure(lines)


def read_failure(runtime_message: str, node_dir: str, mounted_at: Path) -> CriuFailure:
    """CRIU's reason for the failure a runtime reported in `runtime_message` (its log read if reachable)."""
    lines: tuple[str, ...] = ()
    node_path = log_path_in(runtime_message)
    path = local_path(node_path, node_dir, mounted_at) if node_path else None
    if path is not None:
        try:
            with open(path, "rb") as f:
                lines = error_lines(f.read(MAX_LOG_BYTES).decode(errors="replace"))
        except OSError:
            lines = ()
    return explain(lines, runtime_message)
