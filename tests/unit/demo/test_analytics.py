"""The demo workload: its state is checkable, and its ballast is exactly the memory it claims to hold."""

from __future__ import annotations

import subprocess
import sys

from lpm.demo.analytics import MIB, BallastChecker, ballast_intact, expected_revenue_cents, make_ballast


def test_a_flipped_byte_anywhere_fails_the_next_full_pass() -> None:
    ballast = make_ballast(6)
    checker = BallastChecker(ballast, pass_every=3)
    assert [checker.tick() for _ in range(3)] == [None, None, True]
    ballast[5 * MIB + 123] ^= 0x40
    verdicts = [v for v in (checker.tick() for _ in range(8)) if v is not None]
    assert verdicts and verdicts[-1] is False and not ballast_intact(ballast)


def test_each_pass_ends_on_schedule_and_passes_when_untouched() -> None:
    checker = BallastChecker(make_ballast(10), pass_every=5)
    assert [checker.tick() for _ in range(10)] == [None, None, None, None, True] * 2


def test_the_process_holds_the_ballast_and_no_whole_size_copy() -> None:
    # Peak RSS of a child that makes and checks 128 MiB: a whole-size temporary would push it past 256 MiB.
    code = (
        "import resource; from lpm.demo.analytics import make_ballast, ballast_intact;"
        "b = make_ballast(128); assert ballast_intact(b);"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)"
    )
    peak_mib = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert 128 <= peak_mib < 128 + 64, peak_mib


def test_revenue_is_recomputable() -> None:
    assert expected_revenue_cents(3) == sum(100 + (i * 7919) % 5000 for i in (1, 2, 3))


def test_the_loopback_pair_is_one_connection_with_both_ends_in_this_process() -> None:
    from lpm.demo.analytics import _loopback_pair

    client, server = _loopback_pair()
    try:
        client.sendall(b"x")
        assert server.recv(1) == b"x"
        assert client.getpeername() == server.getsockname() and client.getpeername()[0] == "127.0.0.1"
    finally:
        client.close()
        server.close()
