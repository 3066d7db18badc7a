"""What each checkpoint of this agent is doing now, for GetProgress: per container, its stage and the bytes it
moved. In memory; finished entries are kept for a few minutes, so the controller's last poll sees the totals."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import BinaryIO

KEEP_SECONDS = 300.0


@dataclass
class Step:
    container: str
    stage: str
    done: int = 0
    total: int = 0
    started: float = field(default_factory=time.monotonic)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started


class Progress:
    def __init__(self, keep_seconds: float = KEEP_SECONDS) -> None:
        self._lock = threading.Lock()
        self._steps: dict[tuple[str, str], Step] = {}
        self._ended: dict[tuple[str, str], float] = {}
        self._keep = keep_seconds

    def stage(self, checkpoint_id: str, container: str, stage: str, total: int = 0) -> None:
        """The container's checkpoint enters `stage`, which moves `total` bytes (0: not known)."""
        with self._lock:
            self._forget_old()
            self._steps[(checkpoint_id, container)] = Step(container, stage, total=total)
            self._ended.pop((checkpoint_id, container), None)

    def moved(self, checkpoint_id: str, container: str, stage: str, n: int) -> None:
        """`n` more bytes moved in `stage` (ignored once the container is in another stage)."""
        with self._lock:
            step = self._steps.get((checkpoint_id, container))
            if step is not None and step.stage == stage:
                step.done += n

    def resize(self, checkpoint_id: str, container: str, stage: str, total: int) -> None:
        """`stage` turns out to move `total` bytes (it began with an estimate); what it moved so far stays."""
        with self._lock:
            step = self._steps.get((checkpoint_id, container))
            if step is not None and step.stage == stage:
                step.total = total

    def end(self, checkpoint_id: str, container: str) -> None:
        with self._lock:
            step = self._steps.get((checkpoint_id, container))
            if step is not None:
                step.stage, step.done = "done", step.total or step.done
                self._ended[(checkpoint_id, container)] = time.monotonic()

    def report(self, checkpoint_id: str) -> list[Step]:
        with self._lock:
            return [replace(s) for (ckpt, _), s in sorted(self._steps.items()) if ckpt == checkpoint_id]

    def _forget_old(self) -> None:
        now = time.monotonic()
        for key, at in list(self._ended.items()):
            if now - at > self._keep:
                self._steps.pop(key, None)
                del self._ended[key]


class Counted:
    """A reader that reports how many bytes were read through it."""

    def __init__(self, inner: BinaryIO, on_bytes: Callable[[int], None]) -> None:
        self.inner = inner
        self.on_bytes = on_bytes

    def read(self, n: int = -1) -> bytes:
        data = self.inner.read(n)
        self.on_bytes(len(data))
        return data
