"""A stream processor that keeps all of its state in memory: the workload LPM's demo migrates.

Every tick it "processes" one event from a deterministic stream: the event counter goes up by one, the revenue
total grows by that event's amount and the processing position advances. Each tick prints one JSON line:

    {"seq": 41, "events": 41, "revenue_cents": 104512, "position": 4100, "ts": 1764000000.123, "host": "..."}

so a reader can check the state continues after a migration: `seq` never resets, never skips and never repeats
(an update lost or done twice shows as a gap or a repeat). `--ballast-mib` holds extra state in memory
(pseudo-random pages with a running checksum) to measure migrations of larger processes.

Switches give the pod what real servers have, for the connection and failure tests: `--tcp-loopback` keeps a
TCP connection to itself over 127.0.0.1 and sends a byte through it every event (an in-pod client of an in-pod
server); `--tcp-peer HOST:PORT` keeps a connection to a server outside the pod, sends it a line every event
and reconnects when it fails (the line says how often: `peer_reconnects`, and the last error);
`--perf-event` holds a perf event counter, as a profiler does (CRIU cannot dump that); `--hold-open PATH` keeps
a file open and appends every event to it (e.g. a log in an emptyDir).
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import os
import platform
import socket
import struct
import sys
import time

# perf_event_open(2)'s syscall number (not in the os module).
_SYS_PERF_EVENT_OPEN = {"x86_64": 298, "aarch64": 241}.get(platform.machine(), -1)


def event_amount_cents(seq: int) -> int:
    """Deterministic revenue of event `seq`, so anyone can recompute the expected total."""
    return 100 + (seq * 7919) % 5000


def expected_revenue_cents(events: int) -> int:
    return sum(event_amount_cents(i) for i in range(1, events + 1))


BALLAST_SEED = b"lpm-ballast"
MIB = 1 << 20


def _ballast_chunk(i: int) -> bytes:
    return hashlib.shake_256(BALLAST_SEED + i.to_bytes(8, "big")).digest(MIB)


def make_ballast(mib: int) -> bytearray:
    """`mib` MiB of incompressible memory (CRIU must carry every page, zstd cannot shrink it).

    Generated and checked one MiB at a time, so the process holds the ballast and nothing else: a whole-size
    temporary would double (for a moment, triple) what a checkpoint taken at that moment has to carry."""
    ballast = bytearray(mib * MIB)
    for i in range(mib):
        ballast[i * MIB : (i + 1) * MIB] = _ballast_chunk(i)
    return ballast


def ballast_intact(ballast: bytearray) -> bool:
    """True when every byte of the ballast is still what it was generated as."""
    return bool(BallastChecker(ballast, pass_every=1).tick())


class BallastChecker:
    """Checks the ballast a few MiB per event, finishing one pass over all of it every `pass_every` events.

    Checking it all at once would stall the event loop for a second or more at 256 MiB, and a stall next to a
    migration's freeze would be counted as the migration's downtime."""

    def __init__(self, ballast: bytearray, pass_every: int) -> None:
        self.view = memoryview(ballast)
        self.chunks = len(ballast) // MIB
        self.per_tick = max(1, -(-self.chunks // max(1, pass_every)))
        self.next = 0
        self.ok = True

    def tick(self) -> bool | None:
        """Check the next chunks; at the end of a pass return whether all of it matched, else None."""
        end = min(self.chunks, self.next + self.per_tick)
        for i in range(self.next, end):
            self.ok = self.ok and self.view[i * MIB : (i + 1) * MIB] == _ballast_chunk(i)
        self.next = end
        if self.next < self.chunks:
            return None
        verdict, self.next, self.ok = self.ok, 0, True
        return verdict


def _loopback_pair() -> tuple[socket.socket, socket.socket]:
    """A connected (client, server) pair over 127.0.0.1: both ends live in this process, so in this pod."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    return client, server


class Peer:
    """A connection to a server outside the pod; on any error it reconnects (at most once per event)."""

    def __init__(self, address: str) -> None:
        host, _, port = address.rpartition(":")
        self.address = (host, int(port))
        self.sock: socket.socket | None = None
        self.reconnects = 0
        self.last_error = ""

    def send(self, line: bytes) -> bool:
        try:
            if self.sock is None:
                self.sock = socket.create_connection(self.address, timeout=2)
                self.reconnects += 1
            self.sock.sendall(line)
            return True
        except OSError as exc:
            self.last_error = f"{type(exc).__name__}: {exc.strerror or exc}"
            if self.sock is not None:
                self.sock.close()
            self.sock = None
            return False


def _perf_event() -> int:
    """perf_event_open(2) of a software CPU clock counter on this process: what a profiler holds."""
    attr = bytearray(112)  # struct perf_event_attr, PERF_ATTR_SIZE_VER7
    struct.pack_into("IIQ", attr, 0, 1, len(attr), 0)  # type PERF_TYPE_SOFTWARE, size, PERF_COUNT_SW_CPU_CLOCK
    # exclude_kernel | exclude_hv (flag bits 5, 6): what perf_event_paranoid 2 allows without CAP_PERFMON.
    struct.pack_into("Q", attr, 40, 0x60)
    buf = (ctypes.c_char * len(attr)).from_buffer(attr)
    fd = int(ctypes.CDLL(None, use_errno=True).syscall(_SYS_PERF_EVENT_OPEN, buf, 0, -1, -1, 0))
    if fd < 0:
        raise OSError(ctypes.get_errno(), "perf_event_open failed")
    return fd


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="analytics-counter", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--interval",
        type=float,
        default=float(os.environ.get("INTERVAL", "0.2")),
        help="seconds between events [env INTERVAL]",
    )
    parser.add_argument(
        "--ballast-mib",
        type=int,
        default=int(os.environ.get("BALLAST_MIB", "0")),
        help="extra in-memory state, MiB [env BALLAST_MIB]",
    )
    parser.add_argument(
        "--verify-every", type=int, default=50, help="finish a check of the whole ballast every N events"
    )
    parser.add_argument(
        "--tcp-loopback", action="store_true", help="hold a TCP connection over 127.0.0.1, one byte per event"
    )
    parser.add_argument(
        "--tcp-peer", metavar="HOST:PORT", help="hold a TCP connection to this server, one line per event"
    )
    parser.add_argument(
        "--perf-event", action="store_true", help="hold a perf event counter (a profiler's), which CRIU cannot dump"
    )
    parser.add_argument("--hold-open", metavar="PATH", help="keep this file open, appending every event to it")
    args = parser.parse_args(argv)

    loopback = _loopback_pair() if args.tcp_loopback else None
    peer = Peer(args.tcp_peer) if args.tcp_peer else None
    perf_fd = _perf_event() if args.perf_event else None  # noqa: F841 (held open on purpose)
    held = open(args.hold_open, "a", buffering=1) if args.hold_open else None  # held open on purpose
    ballast = make_ballast(args.ballast_mib)
    checker = BallastChecker(ballast, args.verify_every)
    events = 0
    revenue = 0
    position = 0
    while True:
        events += 1
        revenue += event_amount_cents(events)
        position += 100
        line = {
            "seq": events,
            "events": events,
            "revenue_cents": revenue,
            "position": position,
            "ts": round(time.time(), 3),
            "host": socket.gethostname(),
        }
        if loopback is not None:
            client, server = loopback
            client.sendall(b"x")
            line["loopback_echoes"] = events if server.recv(1) == b"x" else -1
        if peer is not None:
            line["peer_sent"] = peer.send(f"{events}\n".encode())
            line["peer_reconnects"] = peer.reconnects - 1
            if peer.last_error:
                line["peer_error"] = peer.last_error
        if held is not None:
            held.write(f"{events}\n")
        if ballast:
            line["ballast_mib"] = len(ballast) >> 20
            verdict = checker.tick()
            if verdict is not None:
                line["ballast_intact"] = verdict
        sys.stdout.write(json.dumps(line) + "\n")
        sys.stdout.flush()
        time.sleep(args.interval)


if __name__ == "__main__":
    raise SystemExit(main())
