"""The kubelet checkpoint API client: the agent's only door to the kubelet.

`POST https://<node>:10250/checkpoint/{namespace}/{pod}/{container}?timeout=<seconds>` with the
apiserver-kubelet-client certificate; a 200 answers `{"items": ["/var/lib/kubelet/checkpoints/<file>.tar"]}`,
a path *on the node*. The agent sees that directory through a hostPath mount, possibly somewhere else:
`node_path()` maps it below `--kubelet-checkpoint-dir` and refuses anything outside it.

Retries use urllib3's own machinery (`Retry`): connection errors and 5xx are retried, never 4xx; POST is
retried explicitly (a checkpoint is safe to repeat: each makes a new archive). A 500 whose body says CRIU
failed (`criu failed: ...`) is not a transport failure and is never retried here: the same dump fails the same
way, and every attempt keeps the source frozen longer; the caller decides whether one repeat is worth it.
The schedule is the seed's: 5 retries after waits of 2, 4, 8, 16, 32 s (`Backoff`; urllib3's stock formula
waits 0 s before the first retry, so `_DeadlineRetry` overrides only the delay). A Retry-After header is
honoured. The whole call, retries included, stays inside one deadline: waits are cut short and no attempt
starts after it.

Status mapping (what the agent reports over gRPC): 404 -> `KubeletNotFound` (pod/container unknown, or the
ContainerCheckpoint feature gate is off), 401/403 -> `KubeletForbidden`, other 4xx -> `KubeletRejected`,
a CRIU failure -> `KubeletCriuFailed` (at once), 5xx/connection failures after the retries ->
`KubeletUnavailable`, with the kubelet's own message.
"""

from __future__ import annotations

import json
import logging
import posixpath
import ssl
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Final, Protocol

import urllib3
from urllib3 import BaseHTTPResponse
from urllib3.connectionpool import ConnectionPool
from urllib3.exceptions import HTTPError, MaxRetryError
from urllib3.util.retry import Retry

log = logging.getLogger(__name__)

KUBELET_CHECKPOINT_DIR: Final = "/var/lib/kubelet/checkpoints"
RETRY_STATUSES: Final = frozenset({500, 502, 503, 504})


class KubeletError(Exception):
    """A kubelet call failed; the message names the node, the call and the kubelet's answer."""

    def __init__(self, message: str, status: int | None = None, attempts: int = 1) -> None:
        super().__init__(message)
        self.status = status
        self.attempts = attempts


class KubeletNotFound(KubeletError):
    pass


class KubeletForbidden(KubeletError):
    pass


class KubeletRejected(KubeletError):
    pass


class KubeletUnavailable(KubeletError):
    pass


class KubeletCriuFailed(KubeletError):
    """The kubelet reached the runtime and CRIU refused or failed: permanent for this container as it is."""


def is_criu_failure(status: int, body: str) -> bool:
    """containerd and CRI-O report a failed CRIU run as `criu failed: type NOTIFY errno 0 path= ...`."""
    return status == 500 and "criu failed" in body.lower()


@dataclass(frozen=True)
class Backoff:
    """Retry schedule: `retries` waits of `initial * factor**i` seconds (the seed: 5 steps, 2 s, x2)."""

    retries: int = 5
    initial: float = 2.0
    factor: float = 2.0
    max_wait: float = 120.0

    def delays(self) -> list[float]:
        return [min(self.initial * self.factor**i, self.max_wait) for i in range(self.retries)]


DEFAULT_BACKOFF: Final = Backoff()


class _DeadlineRetry(Retry):
    """urllib3's Retry with the seed's delays and an overall deadline (time.monotonic())."""

    def __init__(
        self, *args: Any, schedule: Backoff = DEFAULT_BACKOFF, deadline: float = float("inf"), **kw: Any
    ) -> None:
        super().__init__(*args, **kw)
        self.schedule = schedule
        self.deadline = deadline

    def new(self, **kw: Any) -> _DeadlineRetry:
        fresh: _DeadlineRetry = super().new(**kw)
        fresh.schedule = self.schedule
        fresh.deadline = self.deadline
        return fresh

    def _remaining(self) -> float:
        return self.deadline - time.monotonic()

    def get_backoff_time(self) -> float:
        n = len(self.history)
        if n == 0:
            return 0.0
        delays = self.schedule.delays()
        wanted = delays[min(n, len(delays)) - 1]
        return max(0.0, min(wanted, self._remaining()))

    def get_retry_after(self, response: Any) -> float | None:
        after = super().get_retry_after(response)
        return None if after is None else max(0.0, min(after, self._remaining()))

    def increment(
        self,
        method: str | None = None,
        url: str | None = None,
        response: BaseHTTPResponse | None = None,
        error: Exception | None = None,
        _pool: ConnectionPool | None = None,
        _stacktrace: TracebackType | None = None,
    ) -> _DeadlineRetry:
        if response is not None and is_criu_failure(response.status, _body(response)):
            # Not worth a retry: hand the response back (raise_on_status=False turns this into a return).
            raise MaxRetryError(_pool, url or "", "CRIU failed")  # type: ignore[arg-type]
        fresh: _DeadlineRetry = super().increment(method, url, response, error, _pool, _stacktrace)
        return fresh

    def is_exhausted(self) -> bool:
        # No attempt may start once the deadline has passed (a wait is cut to the deadline, then we stop).
        return super().is_exhausted() or (bool(self.history) and self._remaining() <= 0.05)


def _body(response: Any) -> str:
    try:
        return bytes(response.data[:2000]).decode(errors="replace")
    except Exception:  # a body that cannot be read is no CRIU report
        return ""


class Layout(Protocol):
    """An archive that is read without having been written (lpm.agent.dump.TarLayout)."""

    @property
    def size(self) -> int: ...

    def open(self) -> BinaryIO: ...

    def discard(self) -> None: ...


@dataclass(frozen=True)
class CheckpointResult:
    node_path: str  # as the kubelet named it, on the node
    local_path: Path  # where this agent opens it: the archive, or (with `layout`) the directory it is made from
    attempts: int
    seconds: float
    layout: Layout | None = None
    # Post-copy: the runtime's page server, still serving the memory the archive lacks (lpm.agent.dump.LazyDump).
    lazy: Any = None
    # Being sent while it was dumped (lpm.agent.dump.DumpStream), which its caller finishes or fails.
    stream: Any = None

    @property
    def size(self) -> int:
        return self.layout.size if self.layout is not None else self.local_path.stat().st_size

    def open(self) -> BinaryIO:
        """The archive's bytes; each call reads them afresh, and every reader gets the same bytes."""
        return self.layout.open() if self.layout is not None else open(self.local_path, "rb")

    def discard(self) -> None:
        """Remove it from the node (process memory: never kept)."""
        if self.layout is not None:
            self.layout.discard()
        else:
            self.local_path.unlink(missing_ok=True)


class KubeletClient:
    """Thread-safe (one urllib3 PoolManager). All timing parameters are injectable for tests."""

    def __init__(
        self,
        url: str,
        *,
        client_cert: str | None,
        client_key: str | None,
        ca: str | None,
        checkpoint_dir: str = KUBELET_CHECKPOINT_DIR,
        node_checkpoint_dir: str = KUBELET_CHECKPOINT_DIR,
        backoff: Backoff = DEFAULT_BACKOFF,
        connect_timeout: float = 10.0,
    ) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("https", "http") or not parsed.hostname:
            raise ValueError(f"kubelet URL {url!r} must be https://host:port")
        self.url = url.rstrip("/")
        self.checkpoint_dir = Path(checkpoint_dir)
        self.node_checkpoint_dir = node_checkpoint_dir.rstrip("/") or "/"
        self.backoff = backoff
        self.connect_timeout = connect_timeout
        self._http = urllib3.PoolManager(
            num_pools=2,
            maxsize=8,
            cert_reqs=ssl.CERT_REQUIRED if ca else ssl.CERT_NONE,
            ca_certs=ca,
            cert_file=client_cert,
            key_file=client_key,
        )

    def _retry(self, deadline: float) -> _DeadlineRetry:
        return _DeadlineRetry(
            total=self.backoff.retries,
            connect=self.backoff.retries,
            read=self.backoff.retries,
            status=self.backoff.retries,
            other=0,
            redirect=0,
            allowed_methods=frozenset({"GET", "POST"}),
            status_forcelist=RETRY_STATUSES,
            respect_retry_after_header=True,
            raise_on_status=False,
            schedule=self.backoff,
            deadline=deadline,
        )

    def _request(self, method: str, path: str, what: str, timeout: float) -> tuple[urllib3.BaseHTTPResponse, int]:
        started = time.monotonic()
        deadline = started + timeout
        retry = self._retry(deadline)
        try:
            response = self._http.request(
                method,
                f"{self.url}{path}",
                retries=retry,
                timeout=urllib3.Timeout(connect=min(self.connect_timeout, timeout), read=timeout),
                preload_content=True,
            )
        except MaxRetryError as exc:
            raise KubeletUnavailable(
                f"kubelet {self.url} unreachable for {what}: {exc.reason} "
                f"(gave up after {time.monotonic() - started:.1f}s)",
                attempts=self.backoff.retries + 1,
            ) from exc
        except HTTPError as exc:
            raise KubeletUnavailable(f"kubelet {self.url} failed {what}: {exc}") from exc
        history = response.retries.history if response.retries is not None else ()
        return response, len(history) + 1

    @staticmethod
    def _message(response: urllib3.BaseHTTPResponse) -> str:
        text = response.data[:2000].decode(errors="replace").strip()
        return text or response.reason or ""

    def _raise_for(self, response: urllib3.BaseHTTPResponse, what: str, attempts: int) -> None:
        status = response.status
        if status < 400:
            return
        body = self._message(response)
        if status == 404:
            raise KubeletNotFound(
                f"kubelet {self.url}: {what} -> 404 {body} (pod or container not on this node, or the kubelet's "
                "ContainerCheckpoint feature gate is off)",
                status,
                attempts,
            )
        if status in (401, 403):
            raise KubeletForbidden(
                f"kubelet {self.url}: {what} -> {status} {body} (the agent's kubelet client certificate is not "
                "accepted or not authorized for nodes/checkpoint)",
                status,
                attempts,
            )
        if is_criu_failure(status, body):
            raise KubeletCriuFailed(f"kubelet {self.url}: {what} -> {status} {body}", status, attempts)
        if status >= 500:
            raise KubeletUnavailable(
                f"kubelet {self.url}: {what} -> {status} {body} after {attempts} attempt(s)", status, attempts
            )
        raise KubeletRejected(f"kubelet {self.url}: {what} -> {status} {body}", status, attempts)

    def checkpoint(self, namespace: str, pod: str, container: str, timeout: float) -> CheckpointResult:
        """Checkpoint one container; the archive stays on the node until the caller removes it."""
        started = time.monotonic()
        quoted = "/".join(urllib.parse.quote(p, safe="") for p in (namespace, pod, container))
        # The kubelet's own CRI timeout: what is left of ours, at least 1 s.
        path = f"/checkpoint/{quoted}?timeout={max(1, int(timeout))}"
        what = f"checkpoint of {namespace}/{pod}/{container}"
        response, attempts = self._request("POST", path, what, timeout)
        self._raise_for(response, what, attempts)
        try:
            items = json.loads(response.data)["items"]
            node_path = str(items[0])
        except (ValueError, KeyError, IndexError, TypeError):
            raise KubeletRejected(
                f"kubelet {self.url}: {what} answered {self._message(response)[:200]!r}, not {{'items': [path]}}",
                response.status,
                attempts,
            ) from None
        return CheckpointResult(node_path, self.node_path(node_path), attempts, time.monotonic() - started)

    def node_path(self, node_path: str) -> Path:
        """Where this agent sees a file the kubelet named on the node; only inside the checkpoint directory."""
        normal = posixpath.normpath(node_path)
        prefix = self.node_checkpoint_dir
        if not normal.startswith(prefix + "/") or "/.." in normal[len(prefix) :]:
            raise KubeletRejected(f"kubelet named {node_path!r}, which is not inside {prefix}")
        relative = normal[len(prefix) + 1 :]
        if not relative or "/" in relative:
            raise KubeletRejected(f"kubelet named {node_path!r}, not a file directly in {prefix}")
        return self.checkpoint_dir / relative

    def pods(self, timeout: float = 10.0) -> list[dict[str, Any]]:
        """The kubelet's `/pods` (the pods on this node with their status), for container IDs."""
        response, attempts = self._request("GET", "/pods", "list pods", timeout)
        self._raise_for(response, "list pods", attempts)
        try:
            return list(json.loads(response.data).get("items") or [])
        except (ValueError, AttributeError) as exc:
            raise KubeletRejected(f"kubelet {self.url}: /pods is not a pod list: {exc}") from None

    def close(self) -> None:
        self._http.clear()
