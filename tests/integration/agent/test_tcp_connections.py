"""Established TCP connections across a move, with real CRIU and real network namespaces (root).

A process in one network namespace ("the source pod", 10.213.1.2) holds a loopback connection (client and
server in the process, a byte echoed every 10 ms) and a connection to a peer outside (a server in this test,
in the host's namespace). It is dumped with LPM's node CRIU configuration (deploy/node/lpm-criu-action,
`tcp-established`, `network-lock skip`) and restored into another namespace ("the target pod", 10.213.2.2),
as runc does for a pod: the network namespace is external and joined on restore.

What must hold (issue 14): the loopback connection carries on with no reconnect and no lost or repeated
byte; the outside connection fails at once (ECONNABORTED on the next call, a RST at the peer) so that the
application reconnects right away, from its new address; the old address is gone from the target afterwards.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from integration.agent.harness import wait_for

from lpm.agent.freezer import Freezer

ACTION = Path(__file__).resolve().parents[3] / "deploy" / "node" / "lpm-criu-action"
PEER_PORT = 7001

WORKLOAD = textwrap.dedent(
    """
    import socket, sys, time
    peer, log = sys.argv[1], open(sys.argv[2], "a", buffering=1)
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", 7000))
    srv.listen(8)
    client = socket.create_connection(("127.0.0.1", 7000))
    server, _ = srv.accept()
    out = socket.create_connection((peer, 7001))
    # UDP: a loopback pair (both ends in the pod), and a socket connected to the outside peer.
    udp_server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp_server.bind(("127.0.0.1", 7002))
    udp_client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp_client.connect(("127.0.0.1", 7002))
    udp_out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp_out.connect((peer, 7003))
    n = 0
    while True:
        n += 1
        client.sendall(n.to_bytes(4, "big"))
        got = int.from_bytes(server.recv(4, socket.MSG_WAITALL), "big")
        udp_client.send(n.to_bytes(4, "big"))
        udp_got = int.from_bytes(udp_server.recv(4), "big")
        log.write(f"loop {n} {got}\\n")
        log.write(f"udp {n} {udp_got}\\n")
        try:
            udp_out.send(b"u")
        except OSError as exc:
            log.write(f"udp-outside {exc.errno}\\n")
            udp_out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            udp_out.connect((peer, 7003))
            log.write(f"udp-reconnected {udp_out.getsockname()[0]}\\n")
        try:
            out.sendall(b"y")
        except OSError as exc:
            log.write(f"outside {exc.errno} {time.time():.6f}\\n")
            out = socket.create_connection((peer, 7001), timeout=5)
            log.write(f"reconnected {out.getsockname()[0]}\\n")
        time.sleep(0.01)
    """
)


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


@pytest.fixture
def netns() -> Iterator[tuple[str, str]]:
    if shutil.which("criu") is None or shutil.which("ss") is None or shutil.which("nsenter") is None:
        pytest.fail("criu, ss and nsenter are needed: run tests/integration/agent/setup-host.sh as root first")
    tag = uuid.uuid4().hex[:6]
    names = (f"lpm-tcp-src-{tag}", f"lpm-tcp-dst-{tag}")
    try:
        for i, ns in enumerate(names, start=1):
            veth = f"lpmt{i}{tag}"
            _run("ip", "netns", "add", ns)
            _run("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
            _run("ip", "addr", "add", f"10.213.{i}.1/24", "dev", veth)
            _run("ip", "link", "set", veth, "up")
            _run("ip", "-n", ns, "addr", "add", f"10.213.{i}.2/24", "dev", "eth0")
            _run("ip", "-n", ns, "link", "set", "eth0", "up")
            _run("ip", "-n", ns, "link", "set", "lo", "up")
            _run("ip", "-n", ns, "route", "add", "default", "via", f"10.213.{i}.1")
        yield names
    finally:
        for i, ns in enumerate(names, start=1):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
            subprocess.run(["ip", "link", "del", f"lpmt{i}{tag}"], capture_output=True, check=False)


class Peer:
    """The outside end: accepts connections and records, per client address, how each one ended."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("0.0.0.0", PEER_PORT), reuse_port=False)
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # datagrams to it are dropped unread
        self.udp.bind(("0.0.0.0", PEER_PORT + 2))
        self.accepted: list[tuple[str, int]] = []
        self.ended: dict[tuple[str, int], str] = {}
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, addr = self.sock.accept()
            except OSError:
                return
            self.accepted.append(addr)
            threading.Thread(target=self._serve, args=(conn, addr), daemon=True).start()

    def _serve(self, conn: socket.socket, addr: tuple[str, int]) -> None:
        try:
            while conn.recv(4096):
                pass
            self.ended[addr] = "eof"
        except ConnectionResetError:
            self.ended[addr] = "reset"
        except OSError as exc:
            self.ended[addr] = type(exc).__name__


def _loops(log: Path) -> list[tuple[int, int]]:
    return [
        (int(p[1]), int(p[2]))
        for p in (line.split() for line in log.read_text().splitlines())
        if p[0] == "loop" and len(p) == 3
    ]


def test_loopback_connections_survive_and_outside_ones_fail_at_once_so_the_client_reconnects(
    tmp_path: Path, netns: tuple[str, str]
) -> None:
    src, dst = netns
    action, conf = tmp_path / "lpm-criu-action", tmp_path / "runc.conf"
    shutil.copyfile(ACTION, action)
    action.chmod(0o755)
    conf.write_text(f"tcp-established\nnetwork-lock skip\naction-script {action}\n")
    (tmp_path / "work.py").write_text(WORKLOAD)
    log, images = tmp_path / "events.log", tmp_path / "images"
    images.mkdir()
    peer = Peer()
    restored_pid = 0
    proc: subprocess.Popen[bytes] | None = None
    try:
        proc = subprocess.Popen(
            [
                "setsid",
                "nsenter",
                f"--net=/run/netns/{src}",
                sys.executable,
                str(tmp_path / "work.py"),
                "10.213.1.1",
                str(log),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=open(tmp_path / "work.err", "w"),  # the child holds it
        )
        wait_for(lambda: log.exists() and len(_loops(log)) >= 20, "the workload's loop")
        assert peer.accepted and peer.accepted[0][0] == "10.213.1.2"
        ino = os.stat(f"/run/netns/{src}").st_ino
        dump = subprocess.run(
            [
                "criu",
                "dump",
                "-t",
                str(proc.pid),
                "-D",
                str(images),
                "-o",
                "dump.log",
                "--config",
                str(conf),
                "--external",
                f"net[{ino}]:extnet",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert dump.returncode == 0, (images / "dump.log").read_text()[-3000:]
        proc.wait(timeout=10)  # CRIU killed it after the dump, as it does for a migration's source
        assert (images / "lpm-addresses").read_text().split() == ["10.213.1.2"]
        loopback_ports = {int(p) for p in (images / "lpm-loopback-ports").read_text().split()}
        assert 7000 in loopback_ports and len(loopback_ports) == 2, loopback_ports  # both ends of the pair
        before = _loops(log)[-1][0]

        fd = os.open(f"/run/netns/{dst}", os.O_RDONLY)
        try:
            restore = subprocess.run(
                [
                    "criu",
                    "restore",
                    "-D",
                    str(images),
                    "-o",
                    "restore.log",
                    "--config",
                    str(conf),
                    "-d",
                    "--inherit-fd",
                    f"fd[{fd}]:extnet",
                    "--pidfile",
                    str(tmp_path / "restored.pid"),
                ],
                capture_output=True,
                text=True,
                pass_fds=(fd,),
                check=False,
            )
        finally:
            os.close(fd)
        assert restore.returncode == 0, (images / "restore.log").read_text()[-3000:]
        restored_pid = int((tmp_path / "restored.pid").read_text())

        wait_for(lambda: "reconnected" in log.read_text(), "the workload's reconnect")
        lines = log.read_text().splitlines()
        outside = [line.split() for line in lines if line.startswith("outside ")]
        assert len(outside) == 1 and int(outside[0][1]) == 103, outside  # ECONNABORTED, on the first send
        assert "reconnected 10.213.2.2" in lines
        seen = len(_loops(log))
        wait_for(lambda: len(_loops(log)) >= seen + 20, "the loop after the restore")
        loops = _loops(log)
        assert [n for n, _ in loops] == list(range(1, len(loops) + 1)), "a loop was lost or repeated"
        assert all(n == got for n, got in loops), "the loopback connection lost or reordered bytes"
        # UDP over loopback: every datagram of every loop echoed, before and after the move.
        udp = [line.split() for line in log.read_text().splitlines() if line.startswith("udp ")]
        assert len(udp) >= len(loops) - 1 and all(p[1] == p[2] for p in udp), udp[-5:]
        # UDP to the outside peer: the socket bound to the old address was aborted too (disconnected: its next
        # send fails with EDESTADDRREQ), and the workload made a new one, from the new address.
        lines = log.read_text().splitlines()
        assert "udp-outside 89" in lines and "udp-reconnected 10.213.2.2" in lines, lines[-20:]
        assert any(n > before for n, _ in loops)
        wait_for(lambda: peer.ended.get(peer.accepted[0]), "the old connection's end at the peer")
        assert peer.ended[peer.accepted[0]] == "reset"
        assert [a for a, _ in peer.accepted[1:]] == ["10.213.2.2"]
        addrs = subprocess.run(
            ["ip", "-n", dst, "-o", "addr", "show"], capture_output=True, text=True, check=True
        ).stdout
        assert "10.213.1.2" not in addrs, addrs
        # Every end of the loopback connections is back: the RST guard of the restore is gone too.
        tables = subprocess.run(
            ["ip", "netns", "exec", dst, "nft", "list", "tables"], capture_output=True, text=True, check=True
        ).stdout
        assert "lpm_restore" not in tables, tables
    finally:
        peer.sock.close()
        peer.udp.close()
        if restored_pid:
            os.kill(restored_pid, signal.SIGKILL)
        if proc is not None and proc.poll() is None:
            proc.kill()


def test_the_dump_records_only_the_pod_addresses_that_sockets_are_bound_to(
    tmp_path: Path, netns: tuple[str, str]
) -> None:
    """post-dump: a pod whose sockets are all on loopback or the wildcard needs no old address on the target (its
    restore then skips adding and removing one); a socket bound to the pod IP does."""
    src, _ = netns
    listen = "import socket, sys, time; s = socket.socket(); s.bind((sys.argv[1], 7000)); s.listen(); time.sleep(60)"
    procs: list[subprocess.Popen[bytes]] = []

    def in_pod(*argv: str) -> subprocess.Popen[bytes]:
        procs.append(subprocess.Popen(["ip", "netns", "exec", src, *argv], stdout=subprocess.DEVNULL))
        return procs[-1]

    def post_dump(pid: int) -> list[str]:
        images = tmp_path / f"images-{len(procs)}"
        images.mkdir()
        env = {**os.environ, "CRTOOLS_SCRIPT_ACTION": "post-dump", "CRTOOLS_IMAGE_DIR": str(images)}
        subprocess.run(["sh", str(ACTION)], env={**env, "CRTOOLS_INIT_PID": str(pid)}, check=True, capture_output=True)
        return (images / "lpm-addresses").read_text().split()

    def listening(port_owner: str) -> None:
        wait_for(
            lambda: port_owner
            in subprocess.run(
                ["ip", "netns", "exec", src, "ss", "-tlnH"], capture_output=True, text=True, check=False
            ).stdout,
            f"a listener on {port_owner}",
        )

    try:
        sleeper = in_pod("sleep", "60")
        assert post_dump(sleeper.pid) == [], "no socket at all: no address to carry"
        in_pod(sys.executable, "-c", listen, "0.0.0.0")
        listening("0.0.0.0:7000")
        assert post_dump(sleeper.pid) == [], "a wildcard listener needs no particular address"
        in_pod(sys.executable, "-c", listen.replace("7000", "7001"), "10.213.1.2")
        listening("10.213.1.2:7001")
        assert post_dump(sleeper.pid) == ["10.213.1.2"]
    finally:
        for p in procs:
            p.kill()
            p.wait()


def test_a_restore_with_nothing_recorded_spawns_nothing_before_the_pod_resumes(tmp_path: Path) -> None:
    """pre-resume runs while the restored pod is still stopped: when the dump recorded no address and no
    loopback port (empty files), the script leaves at once; with an address recorded it goes into the pod's
    namespace (here: the stand-in nsenter on PATH records that it was called)."""
    images, bin_dir = tmp_path / "images", tmp_path / "bin"
    images.mkdir()
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    (bin_dir / "nsenter").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    (bin_dir / "nsenter").chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "CRTOOLS_SCRIPT_ACTION": "pre-resume",
        "CRTOOLS_IMAGE_DIR": str(images),
        "CRTOOLS_INIT_PID": str(os.getpid()),
    }
    (images / "lpm-addresses").write_text("")
    (images / "lpm-loopback-ports").write_text("")
    subprocess.run(["sh", str(ACTION)], env=env, check=True, capture_output=True)
    assert not calls.exists(), "nothing recorded: no command inside the restored pod's stopped time"
    (images / "lpm-addresses").write_text("10.213.1.2\n")
    subprocess.run(["sh", str(ACTION)], env=env, check=True, capture_output=True)
    assert calls.exists(), "an address recorded at the dump is looked for in the pod's namespace"


# A server as real ones are: a connection its client reset before it was taken fails on first use, and is dropped.
SERVER = """
import socket
s = socket.create_server(('0.0.0.0', 7000))
while True:
    conn = s.accept()[0]
    try:
        conn.sendall(b'hi')
    except OSError:
        pass
    conn.close()
"""


def _answer(address: str) -> str:
    """What a new connection to the pod's server gets within 2 s: its greeting, "refused", or "no answer"."""
    try:
        with socket.create_connection((address, 7000), timeout=2) as conn:
            return conn.recv(2).decode() or "closed"
    except ConnectionRefusedError:
        return "refused"
    except TimeoutError:
        return "no answer"


def _fenced_by_pre_dump(action: Path, env: dict[str, str], pid: int, netns: str) -> bool:
    """Runs the action script's pre-dump for `pid` as CRIU would; whether the pod's namespace is fenced then."""
    pre_dump = {**env, "CRTOOLS_SCRIPT_ACTION": "pre-dump", "CRTOOLS_INIT_PID": str(pid)}
    subprocess.run([str(action)], env=pre_dump, check=True, capture_output=True)
    listing = ["ip", "netns", "exec", netns, "nft", "list", "tables"]
    return "lpm_frozen" in subprocess.run(listing, capture_output=True, text=True, check=True).stdout


def test_a_source_frozen_for_a_migration_refuses_new_connections_until_a_rollback_thaws_it(
    tmp_path: Path, netns: tuple[str, str]
) -> None:
    """pre-dump: the agent froze the pod for a migration (its real Freezer, on a real freezer cgroup) and CRIU
    dumps it, leaving it frozen. A frozen pod's kernel would still accept a new connection that nobody
    answers; instead it is refused at once (a RST), so the client retries, until the rollback's thaw, after which
    the pod answers again; a connection accepted before the dump that the application never took is reset. A
    dump of a pod the agent did not freeze (a `kubectl checkpoint`) fences nothing."""
    src, dst = netns
    uid = str(uuid.uuid4())
    group = Path("/sys/fs/cgroup/freezer") / f"lpm-test-{uid[:8]}" / f"pod{uid}"
    state = tmp_path / "agent-state"
    action, conf, images = tmp_path / "lpm-criu-action", tmp_path / "runc.conf", tmp_path / "images"
    shutil.copyfile(ACTION, action)
    action.chmod(0o755)
    # As on the nodes (deploy/node/lpm-runc-node.sh): the connection the frozen pod's kernel accepted below is
    # in flight (never accepted by the application); it is not dumped.
    conf.write_text(f"tcp-established\nskip-in-flight\nnetwork-lock skip\naction-script {action}\n")
    images.mkdir()
    env = {**os.environ, "LPM_AGENT_STATE_DIR": str(state)}
    argv = ["setsid", "nsenter", f"--net=/run/netns/{src}", sys.executable, "-c", SERVER]
    server = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    group.mkdir(parents=True)
    try:
        (group / "cgroup.procs").write_text(str(server.pid))
        wait_for(lambda: _answer("10.213.1.2") == "hi", "the pod's server")
        freezer = Freezer(lambda _uid, _name: group, state)
        freezer.freeze("20261205t000000z-fence", uid, ["server"])
        waiting = socket.create_connection(("10.213.1.2", 7000), timeout=1)  # the frozen pod's kernel accepts it
        with pytest.raises(TimeoutError):
            waiting.recv(2)  # and nobody answers

        ino = os.stat(f"/run/netns/{src}").st_ino
        argv = ["criu", "dump", "-t", str(server.pid), "-D", str(images), "-o", "dump.log", "--config", str(conf)]
        argv += ["--external", f"net[{ino}]:extnet", "--leave-running", "--freeze-cgroup", str(group)]
        dump = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
        assert dump.returncode == 0, (images / "dump.log").read_text()[-3000:]
        assert (group / "freezer.state").read_text().strip() == "FROZEN", "the source stays frozen after its dump"
        # The fence comes up beside the dump (pre-dump starts it in the background).
        wait_for(lambda: _answer("10.213.1.2") == "refused", "new connections refused")
        assert [_answer("10.213.1.2") for _ in range(3)] == ["refused"] * 3
        # The connection the kernel accepted before is not in the checkpoint (skip-in-flight): reset, so its
        # client retries instead of waiting until the source is gone.
        waiting.settimeout(5)
        with pytest.raises(ConnectionResetError):
            waiting.recv(2)
        waiting.close()
        wait_for(lambda: "(1 waiting connection(s) reset)" in (images / "dump.log").read_text(), "the fence logged")

        freezer.thaw("20261205t000000z-fence", uid, ["server"])  # the rollback
        wait_for(lambda: _answer("10.213.1.2") == "hi", "the thawed pod answering new connections")
        tables = subprocess.run(
            ["ip", "netns", "exec", src, "nft", "list", "tables"], capture_output=True, text=True, check=True
        ).stdout
        assert "lpm_frozen" not in tables, tables

        # Not frozen by the agent (no freeze record names the pod): the dump's pre-dump fences nothing. (The
        # fence would hold the script's stderr until it is up, so run() returning means it would be there.)
        assert not _fenced_by_pre_dump(action, env, server.pid, src)

        # Frozen by the agent, but no TCP socket in the pod's namespace: nothing to refuse, no fence either.
        quiet = subprocess.Popen(["setsid", "nsenter", f"--net=/run/netns/{dst}", "sleep", "60"])
        other_uid = str(uuid.uuid4())
        other = group.parent / f"pod{other_uid}"
        other.mkdir()
        try:
            (other / "cgroup.procs").write_text(str(quiet.pid))
            freezer = Freezer(lambda _uid, _name: other, state)
            freezer.freeze("20261205t000000z-quiet", other_uid, ["sleeper"])
            assert not _fenced_by_pre_dump(action, env, quiet.pid, dst)
            freezer.thaw("20261205t000000z-quiet", other_uid, ["sleeper"])
        finally:
            quiet.kill()
            quiet.wait()
            wait_for(lambda: not (other / "cgroup.procs").read_text().strip(), "the sleeper gone from its cgroup")
            other.rmdir()
    finally:
        if (group / "freezer.state").exists():
            (group / "freezer.state").write_text("THAWED")
        server.kill()
        server.wait()
        wait_for(lambda: not (group / "cgroup.procs").read_text().strip(), "the server gone from its cgroup")
        group.rmdir()
        group.parent.rmdir()


def test_a_fence_that_nft_refuses_is_said_in_the_dump_log_and_the_dump_goes_on(
    tmp_path: Path, netns: tuple[str, str]
) -> None:
    """The fence's nft fails (here: a stand-in nft on PATH, as on a node whose kernel lacks nf_tables): the
    script says so, with nft's words, and exits 0, so the migration goes on without a fence. Run in a throwaway
    network namespace, whatever nft is found."""
    src, _ = netns
    bin_dir, uid = tmp_path / "bin", str(uuid.uuid4())
    bin_dir.mkdir()
    (bin_dir / "nft").write_text(
        '#!/bin/sh\n[ "$1" = list ] && exit 1\necho "Error: Operation not supported" >&2\nexit 1\n'
    )
    (bin_dir / "nft").chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "CRTOOLS_SCRIPT_ACTION": "lpm-fence",
        "LPM_FENCE_POD": uid,
        "CRTOOLS_INIT_PID": str(os.getpid()),
    }
    res = subprocess.run(["ip", "netns", "exec", src, "sh", str(ACTION)], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    said = f"cannot refuse new connections to pod {uid} while it is frozen (nft: Error: Operation not supported)"
    assert said in res.stderr, res.stderr
    assert "waiting connection(s) reset" not in res.stderr
