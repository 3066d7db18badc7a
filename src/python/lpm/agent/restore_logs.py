"""Keep CRIU's restore logs after the runtime deletes them, so a failed restore can say why in CRIU's words.

Why: a restore that CRIU fails is reported by the runtime as `criu failed: type NOTIFY errno 0 log file:
<bundle>/work/restore.log`, and containerd deletes the task's directories, log included, right after the
failed start: by the time anyone reads the pod's status, the reason is gone. With containerd 2.x `<bundle>/work`
(under /run/containerd/io.containerd.runtime.v2.task/<ns>/<id>) is a symlink to the task's state directory
/var/lib/containerd/io.containerd.runtime.v2.task/<ns>/<id>, where CRIU writes `restore.log` (seen with
inotifywait on containerd 2.2.9 here). This watcher follows that tree with inotify, opens every `restore.log`
as soon as it appears (an open file outlives its unlink) and, once it is closed or deleted, keeps CRIU's
error lines, keyed by the pod UID and container name that the task bundle's config.json names (containerd's
CRI annotations). A `work/restore.log` inside a watched task directory is followed too (runc without the
symlink). A bounded number of failures is kept.

inotify through ctypes: the stdlib has no binding, and the few calls needed (init, add_watch, read) do not
justify a dependency. Where inotify is unavailable the watcher reports that and stays idle.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import logging
import os
import select
import struct
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Final

from lpm.agent import criu_log

log = logging.getLogger(__name__)

IN_CLOSE_WRITE: Final = 0x00000008
IN_CREATE: Final = 0x00000100
IN_DELETE: Final = 0x00000200
IN_DELETE_SELF: Final = 0x00000400
IN_IGNORED: Final = 0x00008000
IN_ISDIR: Final = 0x40000000
IN_NONBLOCK: Final = 0o4000
IN_CLOEXEC: Final = 0o2000000
_EVENT = struct.Struct("iIII")
POD_UID_KEYS: Final = ("io.kubernetes.cri.sandbox-uid", "io.kubernetes.pod.uid")
CONTAINER_NAME_KEYS: Final = ("io.kubernetes.cri.container-name", "io.kubernetes.container.name")
LOG_NAME: Final = "restore.log"


class _Inotify:
    def __init__(self) -> None:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        self._add = libc.inotify_add_watch
        self._add.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        self._rm = libc.inotify_rm_watch
        self.fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")

    def add(self, path: Path, mask: int) -> int:
        wd = int(self._add(self.fd, os.fsencode(path), mask))
        if wd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_add_watch {path}: {os.strerror(err)}")
        return wd

    def read(self) -> list[tuple[int, int, str]]:
        try:
            data = os.read(self.fd, 64 * 1024)
        except BlockingIOError:
            return []
        out, offset = [], 0
        while offset + _EVENT.size <= len(data):
            wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
            raw = data[offset + _EVENT.size : offset + _EVENT.size + length]
            out.append((wd, mask, raw.rstrip(b"\0").decode(errors="replace")))
            offset += _EVENT.size + length
        return out

    def close(self) -> None:
        os.close(self.fd)


class RestoreLogWatcher:
    """`start()` then `failures(pod_uid)`; thread-safe. Levels: 0 the task dir, 1 a namespace, 2 a task
    (restore.log here), 3 its work dir (or here)."""

    def __init__(self, task_dir: Path, bundle_dir: Path | None = None, keep: int = 64) -> None:
        self.task_dir = Path(task_dir)  # <ns>/<id>/ hold restore.log (or <ns>/<id>/work/restore.log)
        self.bundle_dir = Path(bundle_dir) if bundle_dir else self.task_dir  # <ns>/<id>/config.json
        self.keep = keep
        self._lock = threading.Lock()
        self._failures: OrderedDict[tuple[str, str], criu_log.CriuFailure] = OrderedDict()
        self._dirs: dict[int, tuple[int, Path]] = {}  # watch descriptor -> (level, path)
        self._open: dict[Path, tuple[int, tuple[str, str]]] = {}  # restore.log -> (fd, (pod uid, container))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ino: _Inotify | None = None
        self.problem = ""

    # ---- the public side -------------------------------------------------------------------------------

    def start(self) -> None:
        try:
            if not self.task_dir.is_dir():
                raise FileNotFoundError(errno.ENOENT, "no such directory", str(self.task_dir))
            self._ino = _Inotify()
            self._watch(self.task_dir, 0)
        except OSError as exc:
            self.problem = f"restore logs are not kept ({exc})"
            log.warning("%s", self.problem)
            return
        self._thread = threading.Thread(target=self._run, name="lpm-restore-logs", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            for fd, _ in self._open.values():
                os.close(fd)
            self._open.clear()
        if self._ino is not None:
            self._ino.close()

    def failures(self, pod_uid: str) -> list[tuple[str, criu_log.CriuFailure]]:
        """Every kept failure of a pod, oldest first, under the container name its bundle gave. containerd 2.2.9
        names every container it restores from a checkpoint "containerd" there, so callers match loosely."""
        with self._lock:
            return [(name, f) for (uid, name), f in self._failures.items() if uid == pod_uid]

    # ---- the watching side -----------------------------------------------------------------------------

    def _watch(self, path: Path, level: int) -> None:
        """Watch `path` (level 0 task dir, 1 namespace, 2 task bundle, 3 its work dir) and catch up on what
        appeared in it before the watch existed."""
        assert self._ino is not None
        mask = IN_CREATE | IN_DELETE_SELF | (IN_CLOSE_WRITE | IN_DELETE if level >= 2 else 0)
        try:
            wd = self._ino.add(path, mask)
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENOTDIR):
                log.debug("cannot watch %s: %s", path, exc)
            return
        self._dirs[wd] = (level, path)
        try:
            entries = list(path.iterdir())
        except OSError:
            return
        for entry in entries:
            self._created(level, path, entry.name, entry.is_dir())

    def _created(self, level: int, parent: Path, name: str, is_dir: bool) -> None:
        if level < 2 and is_dir:
            self._watch(parent / name, level + 1)
        elif level == 2 and is_dir and name == "work":
            self._watch(parent / name, 3)
        elif level >= 2 and name == LOG_NAME:
            self._hold(parent / name, level)

    def _hold(self, path: Path, level: int) -> None:
        if path in self._open:
            return
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return
        task = path.parent if level == 2 else path.parent.parent
        owner = _owner(self.bundle_dir / task.parent.name / task.name)
        if not all(owner) and self.bundle_dir != self.task_dir:
            owner = _owner(task)
        self._open[path] = (fd, owner)

    def _release(self, path: Path) -> None:
        held = self._open.pop(path, None)
        if held is None:
            return
        fd, owner = held
        try:
            text = os.pread(fd, criu_log.MAX_LOG_BYTES, 0).decode(errors="replace")
        finally:
            os.close(fd)
        lines = criu_log.error_lines(text)
        if not lines or not all(owner):
            return
        with self._lock:
            self._failures[owner] = criu_log.explain(lines)
            self._failures.move_to_end(owner)
            while len(self._failures) > self.keep:
                self._failures.popitem(last=False)
        log.info("kept CRIU's restore failure of pod %s container %s: %s", owner[0], owner[1], "; ".join(lines))

    def _run(self) -> None:
        assert self._ino is not None
        while not self._stop.is_set():
            ready, _, _ = select.select([self._ino.fd], [], [], 0.5)
            if not ready:
                continue
            for wd, mask, name in self._ino.read():
                level, path = self._dirs.get(wd, (-1, Path()))
                if mask & IN_IGNORED:
                    self._dirs.pop(wd, None)
                    for held in [p for p in self._open if p.parent == path]:
                        self._release(held)
                    continue
                if level < 0 or not name:
                    continue
                if mask & IN_CREATE:
                    self._created(level, path, name, bool(mask & IN_ISDIR))
                if level >= 2 and name == LOG_NAME and mask & (IN_CLOSE_WRITE | IN_DELETE):
                    self._release(path / name)


def _owner(bundle: Path) -> tuple[str, str]:
    """(pod UID, container name) from the OCI config containerd wrote into the task's bundle."""
    try:
        annotations = json.loads((bundle / "config.json").read_text()).get("annotations") or {}
    except (OSError, ValueError):
        return "", ""
    uid = next((str(annotations[k]) for k in POD_UID_KEYS if k in annotations), "")
    name = next((str(annotations[k]) for k in CONTAINER_NAME_KEYS if k in annotations), "")
    return uid, name
