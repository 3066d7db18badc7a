"""The cluster's daemons: started detached with a pid file, found again by it, stopped, waited for."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from lpm_local.config import LOGS, PATH_ENV, PIDS
from lpm_local.host import log


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        st = Path(f"/proc/{pid}/stat").read_text()
        return st.rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def read_pid(name: str) -> int | None:
    """PID of a daemon this script started, if it still runs (pid file "PID EXE-BASENAME")."""
    p = PIDS / f"{name}.pid"
    try:
        fields = p.read_text().split()
        pid = int(fields[0])
    except (OSError, ValueError, IndexError):
        return None
    if not pid_alive(pid):
        return None
    if len(fields) > 1:  # guard against a recycled PID
        try:
            argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return None
        if not any(a.endswith(fields[1].encode()) for a in argv0[:8]):
            return None
    return pid


def running(name: str) -> Callable[[], bool]:
    """A check, for wait_for, that daemon NAME runs."""
    return lambda: read_pid(name) is not None


def wait_for(
    what: str, fn: Callable[[], object], timeout: float, interval: float = 0.5, proc_name: str | None = None
) -> object:
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            r = fn()
            if r:
                return r
        except Exception as exc:  # - diagnostics only
            last_exc = exc
        if proc_name and read_pid(proc_name) is None:
            tail = ""
            lf = LOGS / f"{proc_name}.log"
            if lf.exists():
                tail = "\n".join(lf.read_text(errors="replace").splitlines()[-25:])
            raise SystemExit(f"{proc_name} exited while waiting for {what}; last log lines:\n{tail}")
        time.sleep(interval)
    raise SystemExit(f"timed out after {timeout:.0f}s waiting for {what} (last error: {last_exc})")


def start_daemon(
    name: str, argv: list[str], netns: str | None = None, mntns: Path | None = None, env: dict[str, str] | None = None
) -> int:
    pid = read_pid(name)
    if pid:
        return pid
    LOGS.mkdir(parents=True, exist_ok=True)
    PIDS.mkdir(parents=True, exist_ok=True)
    cmd = list(argv)
    if netns or mntns:
        pre = ["nsenter"]
        if netns:
            pre.append(f"--net=/run/netns/{netns}")
        if mntns:
            pre.append(f"--mount={mntns}")
        cmd = [*pre, "--", *cmd]
    e = {"PATH": PATH_ENV, "HOME": "/root", "LANG": "C.UTF-8"}
    if env:
        e.update(env)
    logf = open(LOGS / f"{name}.log", "ab")
    logf.write(f"\n==== {time.strftime('%F %T')} starting: {' '.join(cmd)}\n".encode())
    logf.flush()
    p = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=logf,
        stderr=subprocess.STDOUT,
        env=e,
        start_new_session=True,
        close_fds=True,
        cwd="/",
    )
    logf.close()
    (PIDS / f"{name}.pid").write_text(f"{p.pid} {Path(argv[0]).name}")
    # Until the child has exec'd, /proc/<pid>/cmdline is still this script's, and read_pid() would call the
    # daemon gone (a CI run failed "lpm-node-2-kubelet exited while waiting" with the kubelet running).
    deadline = time.monotonic() + 5
    while read_pid(name) is None and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    return p.pid


def stop_pid(name: str, pid: int, timeout: float = 10) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and pid_alive(pid):
        time.sleep(0.1)
    if pid_alive(pid):
        log(f"{name} (pid {pid}) did not stop, killing")
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    # reap if it is our child (not normally: daemons are started by earlier invocations)
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
