"""What in a container would make CRIU's dump or restore fail for certain, read through procfs before the freeze.

Why: a migration that fails at the dump has frozen the pod for nothing, and one that fails at the restore has
done all the work; both cost downtime. Two causes are certain and cheap to see from /proc beforehand:
- Established TCP connections. CRIU refuses to dump them without `--tcp-established`, and a connection to a
  peer outside the pod cannot survive the move (the restored pod has a new IP; the peer is not dumped).
  Connections with both ends in the pod (loopback, or pod IP to pod IP between two of its containers) are
  dumped together; note that the pod-IP ones still name the source pod's address.
- Files open in an emptyDir volume. The restored pod gets a new emptyDir; the Live engine fills it with the
  volume's contents (the agent's dump carries them), the Image engine (the kubelet's checkpoint) leaves it empty,
  so CRIU cannot reopen them there.

Reads go through a procfs root: in production the host's /proc mounted read-only at /host/proc, in tests /proc.
`/proc/<pid>/net/*` lists every socket of the process's network namespace (the pod's), so it is read once, from
the container's init pid. Paths read from `/proc/<pid>/fd/*` and mount points in `/proc/<pid>/mountinfo` are
both relative to the container's root, so they compare directly. A socket waiting in an accept queue or in
TIME_WAIT has inode 0, so only non-zero inodes identify a socket.
"""

from __future__ import annotations

import ipaddress
import os
import re
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

# include/net/tcp_states.h, numbered from 1 (UDP reuses them: CLOSE unconnected, ESTABLISHED connected)
_STATE_NAMES: Final = "ESTABLISHED SYN_SENT SYN_RECV FIN_WAIT1 FIN_WAIT2 TIME_WAIT CLOSE CLOSE_WAIT LAST_ACK LISTEN"
STATES: Final = dict(enumerate([*_STATE_NAMES.split(), "CLOSING", "NEW_SYN_RECV", "BOUND_INACTIVE"], start=1))
PROTOS: Final = ("tcp", "tcp6", "udp", "udp6")
EMPTYDIR: Final = "/volumes/kubernetes.io~empty-dir/"  # <kubelet root>/pods/<uid><EMPTYDIR><name>
NAMED: Final = 3  # remote endpoints or files named in a description line
_OCTAL: Final = re.compile(r"\\([0-7]{3})")


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The address, with a v4-mapped IPv6 one (an IPv4 peer of a dual-stack socket) as the IPv4 it is."""
    ip = ipaddress.ip_address(text)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


@dataclass(frozen=True)
class Socket:
    proto: str  # tcp, tcp6, udp, udp6
    state: str  # ESTABLISHED, LISTEN, ...
    local: tuple[str, int]
    remote: tuple[str, int]
    inode: int

    @property
    def in_pod(self) -> bool:
        """Both ends in the pod: the peer is a loopback address or this socket's own (pod IP) address."""
        remote = _ip(self.remote[0])
        return remote.is_loopback or remote == _ip(self.local[0])


@dataclass(frozen=True)
class Mount:
    mount_point: str
    root: str  # the directory of the source filesystem mounted here (a bind mount's origin)
    fs_type: str
    source: str
    dev: str = ""  # major:minor: a memory-backed emptyDir is recognised by it in the host's mount table


@dataclass(frozen=True)
class OpenFile:
    pid: int
    fd: int
    path: str  # as readlink shows it, " (deleted)" included
    volume: str


@dataclass(frozen=True)
class ContainerReport:
    tcp_established: list[Socket] = field(default_factory=list)
    tcp_listening: int = 0
    udp: int = 0
    open_in_emptydir: list[OpenFile] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # The network namespace the sockets were read from (its inode; 0 unknown): a pod's containers share one.
    netns: int = 0

    @property
    def in_pod_connections(self) -> list[Socket]:
        return [s for s in self.tcp_established if s.in_pod]

    @property
    def external_connections(self) -> list[Socket]:
        return [s for s in self.tcp_established if not s.in_pod]


def _address(text: str) -> tuple[str, int]:
    host, port = text.split(":")
    raw = bytes.fromhex(host)
    if sys.byteorder == "little":  # the kernel prints each 32-bit word of the address in host byte order
        raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    ip = ipaddress.ip_address(raw)
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    return (f"::ffff:{mapped}" if mapped else str(ip)), int(port, 16)  # as Python >= 3.13 and getpeername() show it


def parse_proc_net(text: str, proto: str) -> list[Socket]:
    """The sockets of /proc/<pid>/net/{tcp,tcp6,udp,udp6}."""
    if proto not in PROTOS:
        raise ValueError(f"unknown protocol {proto!r}; expected one of {', '.join(PROTOS)}")
    sockets = []
    for line in text.splitlines():
        f = line.split()
        if len(f) < 10 or not f[0].endswith(":"):
            continue  # the header
        code = int(f[3], 16)
        sockets.append(Socket(proto, STATES.get(code, f"0x{code:02X}"), _address(f[1]), _address(f[2]), int(f[9])))
    return sockets


def _unescape(text: str) -> str:
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), text)


def parse_mountinfo(text: str) -> list[Mount]:
    """/proc/<pid>/mountinfo: `id parent major:minor root mount_point options [optional...] - type source ...`."""
    mounts = []
    for line in text.splitlines():
        left, dash, right = line.partition(" - ")
        f, r = left.split(), right.split()
        if dash and len(f) >= 5 and len(r) >= 2:
            mounts.append(Mount(_unescape(f[4]), _unescape(f[3]), r[0], _unescape(r[1]), f[2]))
    return mounts


def _volume(path: str) -> str | None:
    _, marker, rest = path.partition(EMPTYDIR)
    return (rest.split("/", 1)[0] or None) if marker else None


def emptydir_mounts(mounts: Iterable[Mount], host_mounts: Iterable[Mount] = ()) -> list[tuple[str, str]]:
    """(mount point, volume name) of the emptyDir volumes among a container's mounts. A disk-backed one is a bind
    mount whose root is the kubelet's directory; a memory-backed one (tmpfs, root `/`) is found through the
    host's mount of the same tmpfs (`host_mounts`) under that directory."""
    tmpfs = {m.dev: name for m in host_mounts if m.fs_type == "tmpfs" and (name := _volume(m.mount_point))}
    found = []
    for m in mounts:
        name = _volume(m.root) or _volume(m.source) or (tmpfs.get(m.dev) if m.fs_type == "tmpfs" else None)
        if name:
            found.append((m.mount_point, name))
    return found


def _children(proc_root: Path, pid: int) -> list[int] | None:
    """From /proc/<pid>/task/*/children; None if the kernel has no such files (CONFIG_PROC_CHILDREN unset)."""
    try:
        tasks = list((proc_root / str(pid) / "task").iterdir())
    except FileNotFoundError:
        return []  # exited
    children = []
    for task in tasks:
        try:
            children += [int(c) for c in (task / "children").read_text().split()]
        except FileNotFoundError:
            if task.exists():
                return None
    return children


def _children_by_stat(proc_root: Path) -> dict[int, list[int]]:
    """Parent -> children from the ppid in every /proc/<pid>/stat (after the comm, which may hold ')' and spaces)."""
    tree: dict[int, list[int]] = {}
    for entry in proc_root.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # exited
        tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def process_tree(proc_root: Path, pid: int) -> list[int]:
    """`pid` and its descendants, breadth-first. Raises ProcessLookupError if `pid` does not exist."""
    if not (proc_root / str(pid)).is_dir():
        raise ProcessLookupError(f"no process {pid} under {proc_root}")
    tree, seen, by_stat = [pid], {pid}, None
    for parent in tree:  # the list grows while it is walked
        children = _children(proc_root, parent) if by_stat is None else None
        if children is None:
            by_stat = by_stat if by_stat is not None else _children_by_stat(proc_root)
            children = by_stat.get(parent, [])
        new = [c for c in dict.fromkeys(children) if c not in seen]
        seen.update(new)
        tree += new
    return tree


def open_files_in_emptydir(
    proc_root: Path, pids: Iterable[int], mounts: Sequence[Mount], host_mounts: Iterable[Mount] = ()
) -> tuple[list[OpenFile], list[str]]:
    """The files `pids` hold open under an emptyDir mount (of `mounts`), and warnings for what was unreadable."""
    visible = {m.mount_point: m for m in mounts}  # of mounts stacked on one point, the last is seen
    volumes = dict(emptydir_mounts(visible.values(), host_mounts))
    points = sorted(visible, key=len, reverse=True)  # the innermost mount holds a file
    found: list[OpenFile] = []
    warnings: list[str] = []
    for pid in pids if volumes else ():
        fd_dir = proc_root / str(pid) / "fd"
        try:
            for fd in sorted(int(name) for name in os.listdir(fd_dir)):
                try:
                    target = os.readlink(fd_dir / str(fd))
                except FileNotFoundError:
                    continue  # closed meanwhile
                point = next((p for p in points if target == p or target.startswith(p.rstrip("/") + "/")), None)
                if target[:1] == "/" and point in volumes:  # not socket:[...], pipe:[...], anon_inode:...
                    found.append(OpenFile(pid, fd, target, volumes[point]))
        except (FileNotFoundError, ProcessLookupError):
            continue  # the process exited during the scan
        except OSError as exc:
            hint = "; needs CAP_SYS_PTRACE" if isinstance(exc, PermissionError) else ""
            warnings.append(f"pid {pid}: cannot read its open files ({exc.strerror or exc}{hint})")
    return found, warnings


def inspect_container(proc_root: Path, pid: int) -> ContainerReport:
    """Inspect the container whose init process is `pid` (a pid as `proc_root` numbers it)."""
    pids = process_tree(proc_root, pid)
    warnings: list[str] = []
    sockets: dict[object, Socket] = {}
    for proto in PROTOS:
        try:
            text = (proc_root / str(pid) / "net" / proto).read_text(errors="surrogateescape")
        except FileNotFoundError:
            continue  # no IPv6 in this kernel, or the process exited
        except OSError as exc:
            warnings.append(f"pid {pid}: cannot read its {proto} sockets ({exc.strerror or exc})")
            continue
        for s in parse_proc_net(text, proto):
            sockets.setdefault(s.inode or (s.proto, s.local, s.remote, s.state), s)
    tcp = [s for s in sockets.values() if s.proto.startswith("tcp")]
    try:
        mounts = parse_mountinfo((proc_root / str(pid) / "mountinfo").read_text(errors="surrogateescape"))
    except OSError as exc:
        warnings.append(f"pid {pid}: cannot read its mounts ({exc.strerror or exc}); emptyDir files not checked")
        mounts = []
    host_mounts: list[Mount] = []
    if any(m.fs_type == "tmpfs" for m in mounts):
        try:
            host_mounts = parse_mountinfo((proc_root / "1" / "mountinfo").read_text(errors="surrogateescape"))
        except OSError as exc:
            warnings.append(f"cannot read the host's mounts ({exc.strerror or exc}); memory emptyDirs not checked")
    files, fd_warnings = open_files_in_emptydir(proc_root, pids, mounts, host_mounts)
    return ContainerReport(
        tcp_established=sorted((s for s in tcp if s.state == "ESTABLISHED"), key=lambda s: (s.local, s.remote)),
        tcp_listening=sum(s.state == "LISTEN" for s in tcp),
        udp=sum(s.proto.startswith("udp") for s in sockets.values()),
        open_in_emptydir=files,
        warnings=warnings + fd_warnings,
        netns=_netns(proc_root, pid),
    )


def _netns(proc_root: Path, pid: int) -> int:
    try:
        link = os.readlink(proc_root / str(pid) / "ns" / "net")  # "net:[4026531840]"
    except OSError:
        return 0
    digits = link.rpartition("[")[2].rstrip("]")
    return int(digits) if digits.isdigit() else 0


def _endpoint(address: tuple[str, int]) -> str:
    ip = _ip(address[0])
    return f"[{ip}]:{address[1]}" if ip.version == 6 else f"{ip}:{address[1]}"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _named(names: Sequence[str]) -> str:
    more = len(names) - NAMED
    return ", ".join(names[:NAMED]) + (f" and {more} more" if more > 0 else "")


def describe(report: ContainerReport) -> list[str]:
    """Short lines for people, e.g. "2 established TCP connections (1 inside the pod, 1 to 10.0.0.5:6379)"."""
    lines = []
    if report.tcp_established:
        parts = [f"{len(report.in_pod_connections)} inside the pod"] if report.in_pod_connections else []
        if external := report.external_connections:
            peers = [peer for peer, _ in Counter(_endpoint(s.remote) for s in external).most_common()]
            parts.append(f"{len(external)} to {_named(peers)}")
        lines.append(f"{_count(len(report.tcp_established), 'established TCP connection')} ({', '.join(parts)})")
    if report.tcp_listening:
        lines.append(_count(report.tcp_listening, "listening TCP socket"))
    if report.udp:
        lines.append(_count(report.udp, "UDP socket"))
    if files := report.open_in_emptydir:
        named = [f"{f.path} (volume {f.volume}, pid {f.pid})" for f in files]
        lines.append(f"{_count(len(files), 'file')} open in emptyDir volumes: {_named(named)}")
    lines += [f"not inspected: {w}" for w in report.warnings]
    return lines
