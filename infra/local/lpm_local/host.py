"""Running host commands: the log line, subprocess with the cluster's PATH, mount points."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from lpm_local.config import PATH_ENV

T0 = time.monotonic()  # when this invocation started: log lines carry the seconds since


def log(msg: str) -> None:
    print(f"[{time.monotonic() - T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


def run(
    cmd: list[str],
    check: bool = True,
    capture: bool = False,
    env: dict[str, str] | None = None,
    input: str | None = None,
    quiet: bool = False,
) -> subprocess.CompletedProcess[str]:
    e = dict(os.environ)
    e["PATH"] = PATH_ENV + ":" + e.get("PATH", "")
    if env:
        e.update(env)
    res = subprocess.run(
        cmd,
        check=False,
        text=True,
        env=e,
        input=input,
        stdout=subprocess.PIPE if capture or quiet else None,
        stderr=subprocess.PIPE if capture or quiet else None,
    )
    if check and res.returncode != 0:
        detail = (res.stderr or "").strip() if (capture or quiet) else ""
        raise SystemExit(f"command failed ({res.returncode}): {' '.join(cmd)}\n{detail}")
    return res


def out(cmd: list[str], check: bool = True) -> str:
    return run(cmd, check=check, capture=True).stdout.strip()


def is_mountpoint(path: Path) -> bool:
    return run(["mountpoint", "-q", str(path)], check=False).returncode == 0
