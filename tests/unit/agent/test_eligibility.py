"""Pre-freeze inspection: /proc/net and mountinfo parsing on literal kernel lines, then the real kernel: a loopback
connection of this process, files a real child holds open, a real process tree. A stand-in /proc tree only where
the kernel here cannot show the case (no CONFIG_PROC_CHILDREN, duplicated lines of a table read while changing)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lpm.agent import eligibility as inspect_module
from lpm.agent.eligibility import (
    ContainerReport,
    Mount,
    OpenFile,
    Socket,
    describe,
    emptydir_mounts,
    inspect_container,
    open_files_in_emptydir,
    parse_mountinfo,
    parse_proc_net,
    process_tree,
)

PROC = Path("/proc")
POD = "6a2b3c4d-1111-4222-8333-944455556666"
KUBELET = f"/var/lib/kubelet/pods/{POD}/volumes"
little_endian = pytest.mark.skipif(sys.byteorder != "little", reason="samples are from a little-endian kernel")

TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1457 1 0000000071de1676 100 0
   1: 0F02000A:C350 0500000A:18EB 01 00000000:00000000 02:000A7F4C 00000000  1000        0 98765 1 00000000ed36be28 20 4
   2: 0100007F:1F90 0100007F:D431 06 00000000:00000000 03:00001770 00000000     0        0 0 3 0000000000000000
"""

TCP6 = """\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when
   0: 00000000000000000000000000000000:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2222 1 0
   1: 00000000000000000000000001000000:1F90 00000000000000000000000001000000:A410 01 00000000:00000000 00:00000000 00000000     0        0 3333 1 0
   2: 0000000000000000FFFF00000F02000A:1F90 0000000000000000FFFF00000500000A:D431 01 00000000:00000000 00:00000000 00000000     0        0 4444 1 0
   3: 000000FD000000000000000005000000:01BB 000000FD000000000000000009000000:E2A4 08 00000000:00000000 00:00000000 00000000     0        0 5555 1 0
"""  # noqa: E501

UDP = """\
   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
   55: 00000000:0044 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 7001 2 0000000000000000 0
  812: 0F02000A:D431 0500000A:0035 01 00000000:00000000 00:00000000 00000000   101        0 7002 2 0000000000000000 0
"""


@little_endian
def test_parse_proc_net_tcp() -> None:
    assert parse_proc_net(TCP, "tcp") == [
        Socket("tcp", "LISTEN", ("0.0.0.0", 8080), ("0.0.0.0", 0), 1457),
        Socket("tcp", "ESTABLISHED", ("10.0.2.15", 50000), ("10.0.0.5", 6379), 98765),
        Socket("tcp", "TIME_WAIT", ("127.0.0.1", 8080), ("127.0.0.1", 54321), 0),
    ]


@little_endian
def test_parse_proc_net_tcp6_with_a_v4_mapped_address() -> None:
    assert parse_proc_net(TCP6, "tcp6") == [
        Socket("tcp6", "LISTEN", ("::", 80), ("::", 0), 2222),
        Socket("tcp6", "ESTABLISHED", ("::1", 8080), ("::1", 42000), 3333),
        Socket("tcp6", "ESTABLISHED", ("::ffff:10.0.2.15", 8080), ("::ffff:10.0.0.5", 54321), 4444),
        Socket("tcp6", "CLOSE_WAIT", ("fd00::5", 443), ("fd00::9", 58020), 5555),
    ]


@little_endian
def test_parse_proc_net_udp() -> None:
    assert parse_proc_net(UDP, "udp") == [
        Socket("udp", "CLOSE", ("0.0.0.0", 68), ("0.0.0.0", 0), 7001),
        Socket("udp", "ESTABLISHED", ("10.0.2.15", 54321), ("10.0.0.5", 53), 7002),
    ]


def test_parse_proc_net_refuses_an_unknown_table() -> None:
    with pytest.raises(ValueError, match="raw"):
        parse_proc_net(TCP, "raw")


@pytest.mark.parametrize(
    ("local", "remote", "in_pod"),
    [
        ("127.0.0.1", "127.0.0.1", True),
        ("127.0.0.1", "127.8.9.10", True),
        ("::1", "::1", True),
        ("::ffff:10.0.2.15", "::ffff:127.0.0.1", True),
        ("10.244.1.7", "10.244.1.7", True),  # two containers of the pod over the pod IP
        ("::ffff:10.244.1.7", "10.244.1.7", True),
        ("10.244.1.7", "10.244.2.9", False),
        ("::ffff:10.0.2.15", "::ffff:10.0.0.5", False),
        ("fd00::5", "fd00::9", False),
    ],
)
def test_in_pod(local: str, remote: str, in_pod: bool) -> None:
    assert Socket("tcp", "ESTABLISHED", (local, 40000), (remote, 5432), 1).in_pod is in_pod


MOUNTINFO = f"""\
22 1 0:21 / /proc rw,nosuid - proc proc rw
1201 1195 8:1 {KUBELET}/kubernetes.io~empty-dir/cache /cache rw,relatime master:1 - ext4 /dev/sda1 rw
1202 1195 8:1 {KUBELET}/kubernetes.io~configmap/cfg/..data /etc/my\\040app\\134conf ro - ext4 /dev/sda1 rw
1203 1195 0:57 / /scratch rw,relatime shared:7 master:3 - tmpfs tmpfs rw,size=65536k
1204 1195 0:23 / /dev/shm rw - tmpfs shm rw,size=65536k
1205 1195 8:1 {KUBELET}/kubernetes.io~empty-dir/logs/app /var/log/app rw - ext4 /dev/sda1 rw
"""
HOST_MOUNTINFO = f"""\
88 30 0:57 / {KUBELET}/kubernetes.io~empty-dir/scratch rw,relatime shared:3 - tmpfs tmpfs rw,size=65536k
89 30 0:58 / {KUBELET}/kubernetes.io~projected/kube-api-access-x rw - tmpfs tmpfs rw
"""


def test_parse_mountinfo_decodes_escapes() -> None:
    mounts = parse_mountinfo(MOUNTINFO)
    assert len(mounts) == 6
    assert mounts[1] == Mount("/cache", f"{KUBELET}/kubernetes.io~empty-dir/cache", "ext4", "/dev/sda1", "8:1")
    assert mounts[2].mount_point == "/etc/my app\\conf"
    assert mounts[3] == Mount("/scratch", "/", "tmpfs", "tmpfs", "0:57")


def test_emptydir_mounts_on_disk_with_subpath_and_in_memory() -> None:
    mounts = parse_mountinfo(MOUNTINFO)
    assert emptydir_mounts(mounts) == [("/cache", "cache"), ("/var/log/app", "logs")]
    assert emptydir_mounts(mounts, parse_mountinfo(HOST_MOUNTINFO)) == [
        ("/cache", "cache"),
        ("/scratch", "scratch"),
        ("/var/log/app", "logs"),
    ]


def test_a_real_loopback_connection_is_established_and_in_pod_then_gone() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        accepted, _ = server.accept()
        with client, accepted:
            ours = {os.fstat(s.fileno()).st_ino for s in (client, accepted)}
            listener = os.fstat(server.fileno()).st_ino
            report = inspect_container(PROC, os.getpid())

            mine = [s for s in report.tcp_established if s.inode in ours]
            assert {(s.local, s.remote) for s in mine} == {
                (client.getsockname(), client.getpeername()),
                (accepted.getsockname(), accepted.getpeername()),
            }
            assert all(s.proto == "tcp" and s.state == "ESTABLISHED" and s.in_pod for s in mine)
            assert report.tcp_listening >= 1
            table = parse_proc_net((PROC / str(os.getpid()) / "net" / "tcp").read_text(), "tcp")
            assert [s.state for s in table if s.inode == listener] == ["LISTEN"]
            assert report.warnings == []
    after = inspect_container(PROC, os.getpid())
    assert not ours & {s.inode for s in after.tcp_established}
    assert after.warnings == []


CHILD = """
import sys, time
held = [open(path, "w") for path in sys.argv[1:]]
print(*(f.fileno() for f in held), flush=True)
time.sleep(60)
"""


def test_files_a_real_child_holds_open_under_an_emptydir(tmp_path: Path) -> None:
    volume = tmp_path.resolve() / "volume"
    other = volume / "nested-mount"
    other.mkdir(parents=True)
    kept, deleted, elsewhere = volume / "data.db", volume / "gone.tmp", other / "x"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(kept), str(deleted), str(elsewhere)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        fds = [int(fd) for fd in child.stdout.readline().split()]
        assert len(fds) == 3, "the child did not open its files"
        deleted.unlink()
        mounts = [
            Mount("/", "/", "overlay", "overlay"),
            Mount(str(volume), f"{KUBELET}/kubernetes.io~empty-dir/scratch", "ext4", "/dev/sda1"),
            Mount(str(other), f"{KUBELET}/kubernetes.io~empty-dir/y", "ext4", "/dev/sda1"),
            Mount(str(other), "/exports/x", "nfs4", "server:/exports/x"),  # stacked on it: inside the volume, not in it
        ]
        pids = process_tree(PROC, os.getpid())
        assert child.pid in pids

        found, warnings = open_files_in_emptydir(PROC, pids, mounts)

        assert found == [
            OpenFile(child.pid, fds[0], str(kept), "scratch"),
            OpenFile(child.pid, fds[1], f"{deleted} (deleted)", "scratch"),
        ]
        assert warnings == []
    finally:
        child.kill()
        child.wait()


def test_a_process_that_exited_is_skipped_silently(tmp_path: Path) -> None:
    done = subprocess.Popen(["true"])
    zombie = subprocess.Popen(["true"])
    done.wait()
    while (PROC / str(zombie.pid) / "stat").read_text().rpartition(")")[2].split()[0] != "Z":
        time.sleep(0.01)
    mounts = [Mount(str(tmp_path), f"{KUBELET}/kubernetes.io~empty-dir/x", "ext4", "/dev/sda1")]
    try:
        assert open_files_in_emptydir(PROC, [done.pid, zombie.pid], mounts) == ([], [])
    finally:
        zombie.wait()
    with pytest.raises(ProcessLookupError):
        inspect_container(PROC, done.pid)


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("python3"), reason="needs root, to become nobody")
def test_a_process_whose_files_cannot_be_read_is_named_in_a_warning(tmp_path: Path) -> None:
    # The module is plain stdlib: run its source as nobody (the pants venv under root's home is out of reach)
    program = Path(inspect_module.__file__).read_text() + (
        "\nimport json, sys\n"
        "mounts = [Mount(sys.argv[2], sys.argv[3], 'ext4', '/dev/sda1')]\n"
        "print(json.dumps(open_files_in_emptydir(Path('/proc'), [int(sys.argv[1])], mounts)))\n"
    )
    root = f"{KUBELET}/kubernetes.io~empty-dir/x"
    done = subprocess.run(
        ["python3", "-c", program, str(os.getpid()), str(tmp_path), root],
        user=65534,
        group=65534,
        capture_output=True,
        text=True,
        check=True,
        cwd="/",
    )
    assert json.loads(done.stdout) == [
        [],
        [f"pid {os.getpid()}: cannot read its open files (Permission denied; needs CAP_SYS_PTRACE)"],
    ]


def test_process_tree_finds_a_real_child_and_grandchild() -> None:
    child = subprocess.Popen(
        ["sh", "-c", "sleep 30 & echo $!; wait"], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        assert child.stdout is not None
        grandchild = int(child.stdout.readline())
        assert process_tree(PROC, child.pid) == [child.pid, grandchild]
        tree = process_tree(PROC, os.getpid())
        assert tree[0] == os.getpid()
        assert tree.index(os.getpid()) < tree.index(child.pid) < tree.index(grandchild)
    finally:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()


def fake_proc(root: Path, parents: dict[int, int], children_files: bool) -> Path:
    """A stand-in /proc: pid -> parent, with or without task/<tid>/children (CONFIG_PROC_CHILDREN)."""
    for pid, ppid in parents.items():
        task = root / str(pid) / "task" / str(pid)
        task.mkdir(parents=True)
        (root / str(pid) / "stat").write_text(f"{pid} (a) b (c) S {ppid} {pid} {pid} 0 -1 4194560\n")
        if children_files:
            kids = [str(c) for c, p in parents.items() if p == pid]
            (task / "children").write_text("".join(k + " " for k in kids))
    (root / "self").mkdir()
    return root


@pytest.mark.parametrize("children_files", [True, False])
def test_process_tree_with_and_without_children_files(tmp_path: Path, children_files: bool) -> None:
    proc = fake_proc(tmp_path, {1: 0, 10: 1, 11: 10, 12: 10, 13: 12, 20: 1, 30: 13}, children_files)
    assert process_tree(proc, 10) == [10, 11, 12, 13, 30]
    assert process_tree(proc, 11) == [11]
    with pytest.raises(ProcessLookupError):
        process_tree(proc, 99)


def test_inspect_container_counts_each_socket_once(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, {1: 0, 7: 1}, children_files=True)
    net = proc / "7" / "net"
    net.mkdir()
    lines = TCP.splitlines()
    queued = "   3: 0100007F:1F90 0100007F:D432 01 00000000:00000000 00:00000000 00000000     0        0 0 1 0"
    (net / "tcp").write_text("\n".join([*lines, queued, lines[2], lines[3]]) + "\n")  # read while it changed
    (net / "tcp6").write_text(TCP6)
    (net / "udp").write_text(UDP)
    (proc / "7" / "mountinfo").write_text("")
    (proc / "7" / "fd").mkdir()

    report = inspect_container(proc, 7)

    # by local address; inode 0 (not yet accepted) is still a connection, told apart from TIME_WAIT by its state
    assert [(s.local[1], s.inode) for s in report.tcp_established] == [
        (50000, 98765),
        (8080, 0),
        (8080, 3333),
        (8080, 4444),
    ]
    assert (report.tcp_listening, report.udp, report.open_in_emptydir, report.warnings) == (2, 2, [], [])
    assert [s.inode for s in report.in_pod_connections] == [0, 3333]


def established(remote: str, port: int, local: str = "10.244.1.7") -> Socket:
    return Socket("tcp", "ESTABLISHED", (local, 40000), (remote, port), 1)


def test_describe() -> None:
    report = ContainerReport(
        tcp_established=[established("127.0.0.1", 8080, "127.0.0.1"), established("10.0.0.5", 6379)],
        tcp_listening=1,
        open_in_emptydir=[OpenFile(12, 3, "/cache/db", "cache")],
        warnings=["pid 12: cannot read its open files (Permission denied; needs CAP_SYS_PTRACE)"],
    )
    assert describe(report) == [
        "2 established TCP connections (1 inside the pod, 1 to 10.0.0.5:6379)",
        "1 listening TCP socket",
        "1 file open in emptyDir volumes: /cache/db (volume cache, pid 12)",
        "not inspected: pid 12: cannot read its open files (Permission denied; needs CAP_SYS_PTRACE)",
    ]
    assert describe(ContainerReport()) == []


def test_describe_names_at_most_three_endpoints_most_used_first() -> None:
    remotes = [("10.0.0.9", 5432)] * 3 + [("10.0.0.1", 80), ("fd00::2", 443), ("10.0.0.3", 80), ("10.0.0.4", 80)]
    report = ContainerReport(tcp_established=[established(ip, port) for ip, port in remotes])
    assert describe(report) == [
        "7 established TCP connections (7 to 10.0.0.9:5432, 10.0.0.1:80, [fd00::2]:443 and 2 more)"
    ]
