"""The global kernel tunables the kubelet changes at startup, saved and put back."""

from __future__ import annotations

import json
from pathlib import Path

from lpm_local.config import STATE
from lpm_local.host import log

# The kubelet (protectKernelDefaults: false) sets these *global* tunables once, at startup, and fails to start
# with protectKernelDefaults: true if they differ. We record the host's values before the first kubelet
# starts and put them back as soon as the kubelets are up (and again on `down`), so a running cluster
# leaves e.g. kernel.panic_on_oops alone on this shared machine.
KERNEL_TUNABLES = [
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
]
SYSCTL_SAVED = STATE / "sysctl-saved.json"


def save_sysctls() -> None:
    if SYSCTL_SAVED.exists():
        return
    vals = {k: Path("/proc/sys", k).read_text().strip() for k in KERNEL_TUNABLES}
    SYSCTL_SAVED.write_text(json.dumps(vals, indent=2))


def restore_sysctls(final: bool = False) -> None:
    if not SYSCTL_SAVED.exists():
        return
    changed = []
    for k, v in json.loads(SYSCTL_SAVED.read_text()).items():
        p = Path("/proc/sys", k)
        if p.read_text().strip() != v:
            p.write_text(v)
            changed.append(f"{k.replace('/', '.')}={v}")
    if changed:
        log("restored kernel tunables the kubelet changed: " + " ".join(changed))
    if final:
        SYSCTL_SAVED.unlink()


# Post-copy: CRIU's lazy dump keeps pages in 4 MiB pipes, above the default fs.pipe-max-size (1 MiB); it fails
# with "page-pipe: tee: 65536: Operation not permitted" otherwise. A global tunable: raised while the cluster
# is up (never lowered), and put back by `down`.
POST_COPY_TUNABLES = {"fs/pipe-max-size": 4 << 20}
POST_COPY_SAVED = STATE / "sysctl-post-copy.json"


def raise_post_copy_sysctls() -> None:
    saved = json.loads(POST_COPY_SAVED.read_text()) if POST_COPY_SAVED.exists() else {}
    for k, want in POST_COPY_TUNABLES.items():
        p = Path("/proc/sys", k)
        have = int(p.read_text())
        if have < want:
            saved.setdefault(k, str(have))
            p.write_text(str(want))
            log(f"raised {k.replace('/', '.')} to {want} for post-copy (was {have}; `down` puts it back)")
    if saved:
        POST_COPY_SAVED.write_text(json.dumps(saved, indent=2))


def restore_post_copy_sysctls() -> None:
    if not POST_COPY_SAVED.exists():
        return
    for k, v in json.loads(POST_COPY_SAVED.read_text()).items():
        Path("/proc/sys", k).write_text(v)
        log(f"restored {k.replace('/', '.')}={v}")
    POST_COPY_SAVED.unlink()
