"""Post-copy: where CRIU's page server listens, and the TLS material CRIU uses for it.

The pages go straight from the source node's CRIU page server (run by lpm-runc's lazy `runc checkpoint`) to the
target node's `criu lazy-pages` (started by lpm-runc before `runc restore --lazy-pages`), with no agent in the
path: every page fault of the restored process waits for one round trip, and a relay through the agents (tried
first: Python, gRPC) made that round trip slow enough that post-copy froze a 256 MiB pod longer than copying
everything did. Both ends speak mutual TLS with the agents' own certificates (CRIU's GnuTLS): the agent copies
them into a root-only host directory that CRIU reads (the node's /etc/criu/runc.conf names it for the dump side,
lpm-runc passes it to `criu lazy-pages`). CRIU checks the peer's chain against the agents' CA; the certificates
name no node, so it does not check a host name (`tls-no-cn-verify`).
"""

from __future__ import annotations

import os
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Final

CA: Final = "ca.crt"
CERT: Final = "tls.crt"
KEY: Final = "tls.key"


def free_port(host: str) -> int:
    """A port on `host` that nothing listens on now (CRIU's page server binds it a moment later)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def split_host_port(value: str) -> tuple[str, int]:
    """ "10.0.0.1:4242" -> ("10.0.0.1", 4242); ValueError with the reason otherwise."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{value!r} is not host:port")
    return host.strip("[]"), int(port)


@dataclass(frozen=True)
class CriuTLS:
    """The agent's certificate, key and CA, copied where CRIU on the node reads them (a hostPath, 0700/0600)."""

    directory: Path
    cert: str
    key: str
    ca: str

    def install(self) -> None:
        """Copied afresh before each use, so a rotated certificate reaches CRIU too."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)
        for src, name in ((self.ca, CA), (self.cert, CERT), (self.key, KEY)):
            tmp = self.directory / f".{name}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as out, open(src, "rb") as f:
                shutil.copyfileobj(f, out)
            os.replace(tmp, self.directory / name)

    def paths(self) -> dict[str, str]:
        """For lpm-runc's `ready`: what it passes to `criu lazy-pages --tls`."""
        return {
            "cacert": str(self.directory / CA),
            "cert": str(self.directory / CERT),
            "key": str(self.directory / KEY),
        }
