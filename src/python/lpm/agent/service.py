"""The agent's CheckpointService: every rpc, and how its failures become gRPC status codes.

Every failure leaves as a status code the controller can act on:
  INVALID_ARGUMENT    a name, UID, checkpoint ID or artifact URI that is not well formed
  NOT_FOUND           pod/container unknown to the kubelet or this node; artifact not in the repository
  FAILED_PRECONDITION checkpoint refused (kubelet 401/403/4xx, unsupported; CRIU's refusal, reason
                      CheckpointRefused), no completion marker, frozen by another checkpoint, freezer missing,
                      a rolled-back (fenced) checkpoint ID (reason CheckpointFenced)
  UNAVAILABLE         kubelet unreachable or 502/503/504 after its retries (reason KubeletUnavailable); the
                      repository unreachable
  RESOURCE_EXHAUSTED  every checkpoint/conversion slot busy for --queue-timeout; repository full
  DATA_LOSS           stored bytes do not match their manifest (sha256/size)
  INTERNAL            anything else (the message says what)
Where the agent knows more than the code, the trailing metadata key `lpm-reason` names it (see agent.proto).
Checkpoints and conversions share `--max-concurrent` slots; Freeze/Thaw/GetCapabilities never wait for them.

Failure classes: only transport failures are retried (inside the kubelet client, within one deadline). A CRIU
failure is permanent: the agent reads CRIU's log for the reason, repeats the dump at most once and only when
the reason is not one that fails for certain, and answers CheckpointRefused with CRIU's words and a hint.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import BinaryIO, NoReturn, TypeVar

import grpc
from google.protobuf import duration_pb2, timestamp_pb2
from prometheus_client import Counter, Histogram

from lpm.agent import criu_log, eligibility, pages, transfer
from lpm.agent import dump as dp
from lpm.agent import freezer as fz
from lpm.agent import handoff as ho
from lpm.agent.deps import Deps
from lpm.agent.images import ImageError, default_image_ref
from lpm.agent.kubelet import (
    CheckpointResult,
    KubeletCriuFailed,
    KubeletError,
    KubeletForbidden,
    KubeletNotFound,
    KubeletRejected,
    KubeletUnavailable,
)
from lpm.agent.progress import Counted
from lpm.api.agent.v1 import agent_pb2, agent_pb2_grpc
from lpm.api.constants import POSTCOPY_PROBLEM_PREFIX, PRECOPY_PROBLEM_PREFIX, REASON_POST_COPY_FAILED
from lpm.api.names import InvalidName, require_label, require_subdomain, require_uid
from lpm.storage.backend import (
    CheckpointIncomplete,
    IntegrityError,
    StorageError,
    StorageFull,
    StorageUnavailable,
)
from lpm.storage.manifest import ArchiveInfo, Manifest
from lpm.storage.sealing import KeyConfigError, KeyUnavailable
from lpm.storage.uri import ArtifactRef, CheckpointKey

log = logging.getLogger(__name__)

RPCS = Counter("lpm_agent_rpc_total", "CheckpointService calls by method and gRPC status", ["method", "code"])
RPC_SECONDS = Histogram(
    "lpm_agent_rpc_duration_seconds",
    "CheckpointService call durations by method (Checkpoint and ConvertCheckpointToImage carry process memory)",
    ["method"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 8, 13, 20, 30, 60, 120, 300),
)

AGENT_VERSION = "0.1.0"
SERVICE_NAME = "lpm.agent.v1.CheckpointService"
REASON_KEY = "lpm-reason"
# How long a Checkpoint with await_freeze waits for its migration's Freeze, and the longest a Freeze waits for
# such Checkpoints (whatever it asks): the Freeze comes right after the checkpoint's creation, and the
# Checkpoints within a few API round trips of it.
AWAIT_FREEZE_SECONDS = 30.0
MAX_AWAIT_CHECKPOINTS_SECONDS = 10.0
# A Live push returns once the target's waiting lpm-runc restored the container (Handoff.wait_restore), at most
# this long after staging: the source's durable copy, which starts then, stays off the restore's CPUs.
AWAIT_RESTORE_SECONDS = 5.0
_RESTORE_OUTCOMES = {
    "restored": "lpm-runc restored it",
    "failed": "lpm-runc's restore failed",
    "aborted": "the checkpoint was aborted",
    "timeout": "lpm-runc had not restored it",
}
T = TypeVar("T")


class Abort(Exception):
    def __init__(self, code: grpc.StatusCode, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason


class PostCopyFailed(Exception):
    """The pages of a post-copy dump did not all reach the target (after the target's restore began, its pod
    cannot run without them)."""


class CheckpointRefused(Exception):
    """CRIU refused or failed the dump; the message is CRIU's own words and a hint, without node paths."""


def _duration(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(seconds * 1e9))
    return d


def _timestamp(epoch: float) -> timestamp_pb2.Timestamp:
    t = timestamp_pb2.Timestamp()
    t.FromNanoseconds(int(epoch * 1e9))
    return t


def _status_for(exc: BaseException) -> tuple[grpc.StatusCode, str, str]:
    """The one place that turns errors into gRPC status codes (and, where known, an `lpm-reason`)."""
    code = grpc.StatusCode
    match exc:
        case Abort():
            return exc.code, str(exc), exc.reason
        case InvalidName() | ValueError() if not isinstance(exc, KubeletError):
            return code.INVALID_ARGUMENT, str(exc), ""
        case CheckpointRefused():
            return code.FAILED_PRECONDITION, str(exc), "CheckpointRefused"
        case PostCopyFailed() | dp.LazyAlreadyStarted():
            return code.FAILED_PRECONDITION, str(exc), REASON_POST_COPY_FAILED
        case fz.Fenced():
            return code.FAILED_PRECONDITION, str(exc), "CheckpointFenced"
        case fz.NotFrozenYet():
            return code.UNAVAILABLE, str(exc), "FreezeNotYet"
        case KubeletNotFound() | fz.ContainerNotFound():
            return code.NOT_FOUND, str(exc), ""
        case KubeletUnavailable():
            return code.UNAVAILABLE, str(exc), "KubeletUnavailable"
        case KubeletForbidden() | KubeletRejected() | fz.FreezeConflict() | CheckpointIncomplete():
            return code.FAILED_PRECONDITION, str(exc), ""
        case IntegrityError():
            return code.DATA_LOSS, str(exc), ""
        case StorageFull():
            return code.RESOURCE_EXHAUSTED, str(exc), "StorageFull"
        case KeyUnavailable() | KeyConfigError():
            return code.FAILED_PRECONDITION, str(exc), "EncryptionKeyUnavailable"
        case StorageUnavailable():  # already retried with backoff by the backend
            return code.UNAVAILABLE, str(exc), "StorageUnavailable"
        case FileNotFoundError():
            return code.NOT_FOUND, f"not found: {exc.filename or exc}", ""
        case ConnectionError() | StorageError():
            return code.UNAVAILABLE, str(exc), ""
        case transfer.TransferError():
            return code.DATA_LOSS, str(exc), ""
        case ho.Aborted():
            return code.FAILED_PRECONDITION, str(exc), "RestoreAborted"
        case ho.HandoffError():
            return code.FAILED_PRECONDITION, str(exc), ""
        case ImageError() | fz.FreezerError() | dp.DumpError():
            return code.INTERNAL, str(exc), ""
    return code.INTERNAL, f"{type(exc).__name__}: {exc}", ""


# What a peer agent (client certificate CN lpm-agent) may call on another agent: only hand over a checkpoint.
PEER_METHODS = frozenset({"ReceiveCheckpoint"})


def _lowest_cpu_priority() -> None:
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except OSError as exc:  # not fatal: the copy then competes with the push as it always did
        log.warning("cannot lower the durable copy's CPU priority: %s", exc)


def _peer_may_call(context: grpc.ServicerContext, method: str) -> None:
    names = (context.auth_context() or {}).get("x509_common_name") or []
    if transfer.PEER_NAME.encode() in names and method not in PEER_METHODS:
        raise Abort(grpc.StatusCode.PERMISSION_DENIED, f"a peer agent may not call {method}")


class CheckpointService(agent_pb2_grpc.CheckpointServiceServicer):
    def __init__(self, deps: Deps) -> None:
        self.d = deps
        self._slots = threading.BoundedSemaphore(max(1, deps.max_concurrent))

    # ---- plumbing --------------------------------------------------------------------------------------

    def _call(self, context: grpc.ServicerContext, method: str, body: Callable[[], T]) -> T:
        started, code = time.monotonic(), grpc.StatusCode.OK
        try:
            _peer_may_call(context, method)
            result = body()
        except Exception as exc:
            code, message, reason = _status_for(exc)
            level = logging.ERROR if code == grpc.StatusCode.INTERNAL else logging.WARNING
            log.log(level, "%s failed (%s): %s", method, code.name, message, exc_info=code == grpc.StatusCode.INTERNAL)
            if reason:
                context.set_trailing_metadata(((REASON_KEY, reason),))
            self._abort(context, code, message)
        finally:
            RPCS.labels(method, code.name).inc()
            RPC_SECONDS.labels(method).observe(time.monotonic() - started)
        log.info("%s ok in %.2fs", method, time.monotonic() - started)
        return result

    @staticmethod
    def _abort(context: grpc.ServicerContext, code: grpc.StatusCode, message: str) -> NoReturn:
        context.abort(code, message)
        raise AssertionError("unreachable")  # context.abort raises

    @contextmanager
    def _slot(self, context: grpc.ServicerContext, what: str) -> Iterator[None]:
        remaining = context.time_remaining()
        wait = self.d.queue_timeout if remaining is None else max(0.0, min(self.d.queue_timeout, remaining))
        if not self._slots.acquire(timeout=wait):
            raise Abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"agent on {self.d.node_name}: all {self.d.max_concurrent} checkpoint/conversion slots busy for "
                f"{wait:.0f}s; retry later ({what})",
            )
        try:
            yield
        finally:
            self._slots.release()

    def _deadline(self, context: grpc.ServicerContext, requested: float) -> float:
        budget = requested or self.d.checkpoint_timeout
        remaining = context.time_remaining()
        if remaining is not None:
            budget = min(budget, remaining - 1.0)
        if budget <= 0:
            raise Abort(grpc.StatusCode.DEADLINE_EXCEEDED, "no time left for the checkpoint")
        return budget

    # ---- rpcs ------------------------------------------------------------------------------------------

    def Checkpoint(
        self, request: agent_pb2.CheckpointRequest, context: grpc.ServicerContext
    ) -> agent_pb2.CheckpointResponse:
        return self._call(context, "Checkpoint", lambda: self._checkpoint(request, context))

    def _checkpoint(
        self, request: agent_pb2.CheckpointRequest, context: grpc.ServicerContext
    ) -> agent_pb2.CheckpointResponse:
        require_label("namespace", request.pod_namespace)
        require_subdomain("pod name", request.pod_name)
        ref = ArtifactRef(request.pod_uid, request.checkpoint_id, request.container_name)
        opts = request.options
        level = opts.zstd_level or self.d.zstd_level
        if not 1 <= level <= 22:
            raise ValueError(f"zstd level {level} is not in 1..22")
        timeout = self._deadline(context, opts.timeout.ToNanoseconds() / 1e9 if opts.HasField("timeout") else 0.0)
        self.d.freezer.refuse_if_fenced(request.checkpoint_id)
        progress, ckpt, ctr = self.d.progress, request.checkpoint_id, request.container_name
        with self._slot(context, f"checkpoint {ref.uri}"):
            if not opts.leave_running and opts.await_freeze:
                # Created before the migration's freeze: this call's slot is taken, so the dump starts as soon
                # as the Freeze (which waits for this) has frozen the pod.
                waited = time.monotonic()
                self.d.freezer.await_frozen(ckpt, request.pod_uid, ctr, min(AWAIT_FREEZE_SECONDS, timeout - 1.0))
                timeout -= time.monotonic() - waited
            started = time.monotonic()
            if not opts.leave_running and not self.d.freezer.holds(ckpt, request.pod_uid, ctr):
                # A migration: the source must not run on after its checkpoint. Nothing to do if the controller
                # already froze the pod for this checkpoint ID (asked again, the runtime would be asked again,
                # inside the frozen time); refused (Fenced) once it was rolled back, even if this call waited for
                # its slot while that happened.
                self.d.freezer.freeze(
                    request.checkpoint_id,
                    request.pod_uid,
                    [request.container_name],
                    pod_namespace=request.pod_namespace,
                    pod_name=request.pod_name,
                )
            progress.stage(ckpt, ctr, "dumping")
            try:
                return self._checkpoint_dumped(request, ref, level, timeout, started)
            finally:
                progress.end(ckpt, ctr)

    def _checkpoint_dumped(
        self, request: agent_pb2.CheckpointRequest, ref: ArtifactRef, level: int, timeout: float, started: float
    ) -> agent_pb2.CheckpointResponse:
        """The dump, then the archive to the target's agent (Live engine) and into the store, as one slot. A
        runtime dump's archive starts towards the target while CRIU writes it (DumpStream)."""
        opts, progress, ckpt, ctr = request.options, self.d.progress, request.checkpoint_id, request.container_name
        deadline = started + timeout
        pushes: dict[dp.DumpStream, transfer.Push] = {}

        def start_push(source: Callable[[], BinaryIO], size: int) -> transfer.Push:
            # Live engine: the target's agent gets the archive first; then it is compressed and stored.
            progress.stage(ckpt, ctr, "sending", size)
            return transfer.Push(
                opts.stage_on_address,
                request.checkpoint_id,
                request.container_name,
                source,
                size,
                self.d.peer_tls,
                timeout=max(1.0, deadline - time.monotonic()),
                sent=lambda n: progress.moved(ckpt, ctr, "sending", n),
            ).start()

        def stream() -> dp.DumpStream | None:
            # Each runtime dump attempt gets its own stream; its push starts once the dump began it.
            if not opts.stage_on_address:
                return None
            return dp.DumpStream(
                lambda s: pushes.__setitem__(s, start_push(s.open, s.size_hint)),
                deadline,
                on_total=lambda n: progress.resize(ckpt, ctr, "sending", n),
            )

        result, dumped_by = self._dump(request, timeout - (time.monotonic() - started), stream)
        try:
            for failed in (p for s, p in pushes.items() if s is not result.stream):
                failed.wait(5.0)  # its stream failed with its dump: gone before another push of this container
            if not opts.leave_running and self.d.freezer.fenced(request.checkpoint_id):
                # Rolled back while the kubelet worked: this archive must never be stored, let alone restored (a
                # stream that began ends without its last chunk, which the target needs before it stages).
                if result.stream is not None:
                    result.stream.fail("the migration was rolled back")
                    pushes[result.stream].wait(5.0)
                result.discard()
                self.d.freezer.refuse_if_fenced(request.checkpoint_id)
            checkpointed_at = time.time()
            kubelet_seconds = time.monotonic() - started
            if result.lazy is not None:
                return self._post_copy(request, result, timeout - kubelet_seconds, checkpointed_at, kubelet_seconds)
            size = result.size
            push: transfer.Push | None = None
            if result.stream is not None:
                result.stream.finish(result.layout)  # the rest follows what went while CRIU wrote
                push = pushes[result.stream]
            elif opts.stage_on_address:
                push = start_push(result.open, size)
            else:
                progress.stage(ckpt, ctr, "storing", size)
        except BaseException:
            if result.stream is not None:
                result.stream.fail("the agent gave up on this checkpoint")  # nothing if it was finished
            raise

        def store() -> Manifest:
            with result.open() as raw:
                return self.d.store.put_archive(
                    ref,
                    Counted(raw, lambda n: progress.moved(ckpt, ctr, "storing", n)),
                    zstd_level=level,
                    zstd_threads=self.d.zstd_threads,
                    info=ArchiveInfo(
                        pod_namespace=request.pod_namespace,
                        pod_name=request.pod_name,
                        node_name=self.d.node_name,
                        source_archive=result.local_path.name,
                        checkpointed_at=datetime.fromtimestamp(checkpointed_at, UTC).isoformat(),
                        criu_version=self.d.criu_version,
                        runtime_name=self.d.images.runtime,
                        runtime_version=self.d.runtime_version,
                    ),
                )

        try:
            if push is None:
                manifest = store()
            else:
                # The durable copy must not slow the push or the restore, which the frozen source waits for: it
                # starts once the target has restored the checkpoint (ReceiveCheckpoint returns then, or after
                # AWAIT_RESTORE_SECONDS), at the lowest CPU priority (on a fresh thread, with its zstd workers: an
                # unprivileged agent cannot raise a priority again; it counts only within the agent's cgroup).
                push.wait(timeout - (time.monotonic() - started))
                progress.stage(ckpt, ctr, "storing", size)
                with ThreadPoolExecutor(1, thread_name_prefix="store", initializer=_lowest_cpu_priority) as pool:
                    manifest = pool.submit(store).result()
        finally:
            # The archive holds the container's memory and is root-only on the node: never leave it there.
            result.discard()
        return agent_pb2.CheckpointResponse(
            dumped_by=dumped_by,
            staged_on_target=bool(push and push.ok),
            stage_message=push.message if push else "",
            checkpoint_id=request.checkpoint_id,
            artifact=self._artifact(manifest),
            node_name=self.d.node_name,
            kubelet_duration=_duration(kubelet_seconds),
            store_duration=_duration(manifest.info.store_seconds),
            checkpointed_at=_timestamp(checkpointed_at),
            attempts=result.attempts,
        )

    def _post_copy(
        self,
        request: agent_pb2.CheckpointRequest,
        result: CheckpointResult,
        timeout: float,
        checkpointed_at: float,
        kubelet_seconds: float,
    ) -> agent_pb2.CheckpointResponse:
        """The dump left the memory with CRIU's page server on this node: push the rest to the target's agent,
        whose lpm-runc restores at once and has `criu lazy-pages` pull the pages straight from that server; the
        call ends when every page went (the server then exits). Nothing is stored (the images hold no memory).
        Before the target restored, a failure here leaves the source as it was (paused, whole)."""
        progress, ckpt, ctr = self.d.progress, request.checkpoint_id, request.container_name
        lazy: dp.LazyDump = result.lazy
        deadline = time.monotonic() + timeout
        try:
            progress.stage(ckpt, ctr, "sending", result.size)
            push = transfer.Push(
                request.options.stage_on_address,
                ckpt,
                ctr,
                result.open,
                result.size,
                self.d.peer_tls,
                timeout=max(1.0, timeout),
                sent=lambda n: progress.moved(ckpt, ctr, "sending", n),
                lazy_pages_from=lazy.page_server,
            ).start()
            push.wait(deadline - time.monotonic())
            if not push.ok:
                raise PostCopyFailed(f"post-copy: the target did not take the checkpoint: {push.message}")
            progress.stage(ckpt, ctr, "streaming pages", 0)
            started = time.monotonic()
            failed = lazy.wait(max(1.0, deadline - time.monotonic()))
        except BaseException:
            lazy.stop()
            raise
        finally:
            result.discard()
        if failed:
            lazy.stop()
            raise PostCopyFailed(f"post-copy of {ckpt}/{ctr}: {failed}")
        message = (
            f"CRIU's page server on {self.d.node_name} served every page of about {lazy.memory_bytes >> 20} MiB in "
            f"{time.monotonic() - started:.1f}s after the push"
        )
        log.info("post-copy %s/%s: %s", ckpt, ctr, message)
        return agent_pb2.CheckpointResponse(
            dumped_by="containerd",
            staged_on_target=True,
            stage_message=push.message,
            checkpoint_id=ckpt,
            node_name=self.d.node_name,
            kubelet_duration=_duration(kubelet_seconds),
            checkpointed_at=_timestamp(checkpointed_at),
            attempts=result.attempts,
            memory_streamed=True,
            pages_message=message,
        )

    def _dump(
        self,
        request: agent_pb2.CheckpointRequest,
        timeout: float,
        stream: Callable[[], dp.DumpStream | None] = lambda: None,
    ) -> tuple[CheckpointResult, str]:
        """The dump, and who made it. A CRIU failure is repeated at most once, and not at all when its reason
        fails for certain (an open TCP connection); then it is CheckpointRefused with CRIU's own words."""
        deadline = time.monotonic() + timeout
        ns, pod, ctr = request.pod_namespace, request.pod_name, request.container_name
        for attempt in (1, 2):
            try:
                return self._dump_once(request, deadline - time.monotonic(), stream)
            except (KubeletCriuFailed, dp.DumpCriuFailed) as exc:
                failure = criu_log.read_failure(str(exc), self.d.runtime_node_task_dir, self.d.runtime_task_dir)
                log.warning("checkpoint of %s/%s/%s: %s (attempt %d)", ns, pod, ctr, failure.summary(), attempt)
                if failure.certain or attempt == 2 or deadline - time.monotonic() < 1.0:
                    raise CheckpointRefused(
                        f"CRIU could not checkpoint container {ctr} on node {self.d.node_name}: {failure.summary()}"
                    ) from None
                self.d.freezer.refuse_if_fenced(request.checkpoint_id)
        raise AssertionError("unreachable")

    def _dump_once(
        self,
        request: agent_pb2.CheckpointRequest,
        timeout: float,
        stream: Callable[[], dp.DumpStream | None] = lambda: None,
    ) -> tuple[CheckpointResult, str]:
        """The Live engine's source (frozen, its archive going to a target's agent) is dumped through
        containerd when this agent can; anything else, or a runtime dump that fails for a reason other than
        CRIU's, goes through the kubelet. The container stays frozen either way."""
        ns, pod, ctr = request.pod_namespace, request.pod_name, request.container_name
        opts = request.options
        record = self.d.freezer.status(request.checkpoint_id)
        target = record.containers.get(ctr) if record else None
        if self.d.dumper is not None and opts.stage_on_address and not opts.leave_running and target:
            try:
                label = f"{request.checkpoint_id}-{ctr}"
                pid = self.d.dumper.task_pid(target) or self.d.freezer.control.pid(target)
                lazy_above = opts.lazy_pages_above_bytes if not self.d.lazy_pages_problem else 0
                if lazy_above and self.d.criu_tls is not None:
                    self.d.criu_tls.install()  # the node's runc.conf has CRIU's page server read them
                else:
                    lazy_above = 0
                dumped = self.d.dumper.dump(target, pid, label, timeout, lazy_above, stream())
                return dumped, "containerd"
            except (dp.DumpCriuFailed, dp.LazyAlreadyStarted):
                raise
            except (dp.DumpError, fz.FreezerError) as exc:
                log.warning("runtime dump of %s/%s/%s failed (%s); dumping through the kubelet", ns, pod, ctr, exc)
        return self.d.kubelet.checkpoint(ns, pod, ctr, timeout), "kubelet"

    @staticmethod
    def _artifact(m: Manifest) -> agent_pb2.ArtifactInfo:
        return agent_pb2.ArtifactInfo(
            artifact_uri=m.uri,
            compressed_size_bytes=m.size,
            raw_size_bytes=m.info.raw_size,
            sha256=m.sha256,
            raw_sha256=m.info.raw_sha256,
            zstd_level=m.info.zstd_level,
        )

    def CompleteCheckpoint(
        self, request: agent_pb2.CompleteCheckpointRequest, context: grpc.ServicerContext
    ) -> agent_pb2.CompleteCheckpointResponse:
        def body() -> agent_pb2.CompleteCheckpointResponse:
            key = CheckpointKey(request.pod_uid, request.checkpoint_id)
            names = [require_label("container name", n) for n in request.container_names]
            if not names:
                raise ValueError("container_names is empty")
            # A rolled-back checkpoint is never sealed: without the marker nobody restores any part of it.
            self.d.freezer.refuse_if_fenced(request.checkpoint_id)
            manifests = self.d.store.complete(key, names)
            return agent_pb2.CompleteCheckpointResponse(artifacts=[self._artifact(m) for m in manifests])

        return self._call(context, "CompleteCheckpoint", body)

    def DeleteCheckpoint(
        self, request: agent_pb2.DeleteCheckpointRequest, context: grpc.ServicerContext
    ) -> agent_pb2.DeleteCheckpointResponse:
        def body() -> agent_pb2.DeleteCheckpointResponse:
            key = CheckpointKey(request.pod_uid, request.checkpoint_id)
            if not self.d.store.backend.exists(key.relative_dir):
                return agent_pb2.DeleteCheckpointResponse(existed=False)
            self.d.store.delete(key)
            return agent_pb2.DeleteCheckpointResponse(existed=True)

        return self._call(context, "DeleteCheckpoint", body)

    def ListCheckpoints(
        self, request: agent_pb2.ListCheckpointsRequest, context: grpc.ServicerContext
    ) -> agent_pb2.ListCheckpointsResponse:
        def body() -> agent_pb2.ListCheckpointsResponse:
            return agent_pb2.ListCheckpointsResponse(
                checkpoints=[
                    agent_pb2.StoredCheckpoint(pod_uid=k.pod_uid, checkpoint_id=k.checkpoint_id, complete=done)
                    for k, done in self.d.store.list_all()
                ]
            )

        return self._call(context, "ListCheckpoints", body)

    def ConvertCheckpointToImage(
        self, request: agent_pb2.ConvertRequest, context: grpc.ServicerContext
    ) -> agent_pb2.ConvertResponse:
        def body() -> agent_pb2.ConvertResponse:
            ref = ArtifactRef.parse(request.artifact_uri)
            container = require_label("container name", request.container_name or ref.container)
            image_ref = request.image_name or default_image_ref(ref)
            if any(ch.isspace() for ch in image_ref) or image_ref.startswith("-"):
                raise ValueError(f"image name {image_ref!r} is not a valid reference")
            with self._slot(context, f"convert {ref.uri}"):
                loaded = self.d.images.convert(self.d.store, ref, container, image_ref)
            return agent_pb2.ConvertResponse(
                image_ref=loaded.image_ref,
                image_id=loaded.image_id,
                duration=_duration(loaded.seconds),
                node_name=self.d.node_name,
            )

        return self._call(context, "ConvertCheckpointToImage", body)

    def _states(self, states: list[fz.ContainerState]) -> list[agent_pb2.ContainerFreezeStatus]:
        out = []
        for s in states:
            if s.frozen:
                state = agent_pb2.FREEZE_STATE_FROZEN
            else:
                state = agent_pb2.FREEZE_STATE_GONE if s.gone else agent_pb2.FREEZE_STATE_THAWED
            status = agent_pb2.ContainerFreezeStatus(container_name=s.name, state=state, evidence=s.evidence)
            if s.auto_thaw_at is not None:
                status.auto_thaw_at.CopyFrom(_timestamp(s.auto_thaw_at))
            out.append(status)
        return out

    def Freeze(self, request: agent_pb2.FreezeRequest, context: grpc.ServicerContext) -> agent_pb2.FreezeResponse:
        def body() -> agent_pb2.FreezeResponse:
            require_uid("pod UID", request.pod_uid)
            require_label("checkpoint ID", request.checkpoint_id)
            names = [require_label("container name", n) for n in request.container_names]
            if not names:
                raise ValueError("container_names is empty")
            after = request.auto_thaw_after.ToNanoseconds() / 1e9 if request.HasField("auto_thaw_after") else None
            wait = request.await_checkpoints.ToNanoseconds() / 1e9 if request.HasField("await_checkpoints") else 0.0
            held = all(self.d.freezer.holds(request.checkpoint_id, request.pod_uid, n) for n in names)
            if wait > 0 and not held:  # a repeated Freeze (a renewal) has nothing to wait for: its dump went on
                waited = time.monotonic()
                met = self.d.freezer.await_checkpoints(
                    request.checkpoint_id, names, min(wait, MAX_AWAIT_CHECKPOINTS_SECONDS)
                )
                log.info(
                    "checkpoint %s: %s after %.3fs",
                    request.checkpoint_id,
                    "its Checkpoint calls wait; freezing" if met else "no Checkpoint call waits yet; freezing anyway",
                    time.monotonic() - waited,
                )
            states = self.d.freezer.freeze(
                request.checkpoint_id,
                request.pod_uid,
                names,
                deadline=after or None,
                pod_namespace=request.pod_namespace,
                pod_name=request.pod_name,
            )
            return agent_pb2.FreezeResponse(containers=self._states(states))

        return self._call(context, "Freeze", body)

    def Thaw(self, request: agent_pb2.ThawRequest, context: grpc.ServicerContext) -> agent_pb2.ThawResponse:
        def body() -> agent_pb2.ThawResponse:
            require_uid("pod UID", request.pod_uid)
            require_label("checkpoint ID", request.checkpoint_id)
            names = [require_label("container name", n) for n in request.container_names]
            states = self.d.freezer.thaw(request.checkpoint_id, request.pod_uid, names)
            return agent_pb2.ThawResponse(containers=self._states(states))

        return self._call(context, "Thaw", body)

    def CheckEligibility(
        self, request: agent_pb2.EligibilityRequest, context: grpc.ServicerContext
    ) -> agent_pb2.EligibilityResponse:
        return self._call(context, "CheckEligibility", lambda: self._eligibility(request))

    def _eligibility(self, request: agent_pb2.EligibilityRequest) -> agent_pb2.EligibilityResponse:
        require_uid("pod UID", request.pod_uid)
        names = [require_label("container name", n) for n in request.container_names]
        if not names:
            raise ValueError("container_names is empty")
        out = agent_pb2.EligibilityResponse()
        conns = out.connections
        seen_netns: set[int] = set()
        carried: set[str] = set()
        held_open = 0
        for name in names:
            pid = self.d.freezer.pid(request.pod_uid, name)  # NOT_FOUND if the container is not on this node
            try:
                report = eligibility.inspect_container(self.d.proc_root, pid)
            except OSError as exc:
                out.problems.add(container_name=name, check="NotInspected", message=str(exc), blocking=False)
                continue
            for warning in report.warnings:
                out.problems.add(container_name=name, check="NotInspected", message=warning, blocking=False)
            # Containers of a pod share its network namespace: count its sockets once.
            if report.netns not in seen_netns:
                seen_netns.add(report.netns)
                conns.established += len(report.tcp_established)
                conns.in_pod += len(report.in_pod_connections)
                conns.external += len(report.external_connections)
                conns.listening += report.tcp_listening
                conns.udp += report.udp
                for sock in report.external_connections:
                    peer = f"{sock.remote[0]}:{sock.remote[1]}"
                    if len(conns.external_peers) < 5 and peer not in conns.external_peers:
                        conns.external_peers.append(peer)
                if report.tcp_established and not request.tcp_established:
                    out.problems.add(
                        container_name=name,
                        check="TCPConnectionOpen",
                        message="; ".join(eligibility.describe(report))
                        + ": this migration refuses pods with established TCP connections (spec.options."
                        "tcpEstablished: false); leave it at true (the default) to move them: connections inside "
                        "the pod survive, those to outside peers are aborted on the target and reconnect",
                        blocking=True,
                    )
            for f in report.open_in_emptydir:
                held_open += 1
                if request.empty_dir_moves:
                    carried.add(f.volume)
                    continue
                out.problems.add(
                    container_name=name,
                    check="OpenFileInEmptyDir",
                    message=f"process {f.pid} has {f.path} open in emptyDir volume {f.volume!r}, whose contents "
                    "stay on this node with the Image engine: the restore on the target cannot reopen it (the "
                    "Live engine carries emptyDir contents)",
                    blocking=True,
                )
        out.checked.append(
            f"TCP: {conns.established} established ({conns.in_pod} inside the pod, {conns.external} external"
            + (f": {', '.join(conns.external_peers)}" if conns.external_peers else "")
            + f"), {conns.listening} listening, {conns.udp} UDP"
            + (
                "; established connections move (tcpEstablished): those inside the pod intact, the external "
                "ones are aborted on the target"
                if request.tcp_established and conns.established
                else ""
            )
        )
        out.checked.append(
            f"files open in emptyDir volumes: {held_open}"
            + (
                f"; emptyDir volumes with open files move with their contents: {', '.join(sorted(carried))}"
                if carried
                else ""
            )
        )
        return out

    def DescribeRestoreFailure(
        self, request: agent_pb2.RestoreFailureRequest, context: grpc.ServicerContext
    ) -> agent_pb2.RestoreFailureResponse:
        def body() -> agent_pb2.RestoreFailureResponse:
            require_uid("pod UID", request.pod_uid)
            names = [require_label("container name", n) for n in request.container_names]
            out = agent_pb2.RestoreFailureResponse()
            if request.checkpoint_id and self.d.handoff is not None:
                # Live engine: lpm-runc's restore left CRIU's log in the hand-off directory.
                for name in names:
                    text = self.d.handoff.restore_log(request.checkpoint_id, name)
                    lines = criu_log.error_lines(text) if text else ()
                    if lines:
                        f = criu_log.explain(lines)
                        out.containers.add(container_name=name, lines=f.lines, cause=f.cause, advice=f.advice)
                if out.containers:
                    return out
            kept = self.d.restore_logs.failures(request.pod_uid) if self.d.restore_logs else []
            exact = [(n, f) for n, f in kept if n in names]
            if not exact and kept:
                # The runtime did not name the container (see RestoreLogWatcher.failures): with one container
                # asked for, it is that one; otherwise the newest failure, under the name the runtime gave.
                n, f = kept[-1]
                exact = [(names[0] if len(names) == 1 else n, f)]
            for name, failure in exact:
                out.containers.add(container_name=name, lines=failure.lines, cause=failure.cause, advice=failure.advice)
            return out

        return self._call(context, "DescribeRestoreFailure", body)

    def _handoff(self) -> ho.Handoff:
        if self.d.handoff is None:
            raise Abort(grpc.StatusCode.FAILED_PRECONDITION, f"agent on {self.d.node_name} has no restore hand-off")
        return self.d.handoff

    def GetRestoreState(
        self, request: agent_pb2.RestoreStateRequest, context: grpc.ServicerContext
    ) -> agent_pb2.RestoreStateResponse:
        def body() -> agent_pb2.RestoreStateResponse:
            handoff = self._handoff()
            names = [require_label("container name", n) for n in request.container_names]
            until = time.monotonic() + min(5.0, request.wait.ToNanoseconds() / 1e9)
            while True:
                aborted = handoff.aborted(request.checkpoint_id) or ""
                states = handoff.states(request.checkpoint_id, names)
                if aborted or time.monotonic() >= until or all(s.state is not ho.State.ABSENT for s in states):
                    break
                time.sleep(0.02)
            out = agent_pb2.RestoreStateResponse(aborted=aborted)
            for st in states:
                out.containers.add(
                    container_name=st.container_name,
                    state=agent_pb2.RestoreState.Value(f"RESTORE_STATE_{st.state.value}"),
                    container_id=st.container_id,
                    waiting_since=st.waiting_since,
                    pages=agent_pb2.PageStream.Value(f"PAGE_STREAM_{st.pages}"),
                    pages_message=st.pages_message,
                )
            return out

        return self._call(context, "GetRestoreState", body)

    def StageRestore(
        self, request: agent_pb2.StageRestoreRequest, context: grpc.ServicerContext
    ) -> agent_pb2.StageRestoreResponse:
        def body() -> agent_pb2.StageRestoreResponse:
            handoff = self._handoff()
            ref = ArtifactRef.parse(request.artifact_uri)
            if ref.checkpoint_id != request.checkpoint_id or ref.container != request.container_name:
                raise ValueError(
                    f"{request.artifact_uri} is not container {request.container_name} of checkpoint "
                    f"{request.checkpoint_id}"
                )
            with self._slot(context, f"staging {ref.uri}"):
                if not self.d.store.is_complete(ref.key):
                    raise CheckpointIncomplete(f"{ref.uri}: the checkpoint has no completion marker")
                size = self.d.store.manifest(ref).info.raw_size
                staged = handoff.stage(
                    request.checkpoint_id, request.container_name, self.d.store.read_raw(ref), size_bytes=size
                )
            return agent_pb2.StageRestoreResponse(
                image_bytes=staged.image_bytes,
                rootfs_diff_bytes=staged.rootfs_diff_bytes,
                duration=_duration(staged.seconds),
            )

        return self._call(context, "StageRestore", body)

    def ReceiveCheckpoint(
        self, request_iterator: Iterator[transfer.Received], context: grpc.ServicerContext
    ) -> agent_pb2.StageRestoreResponse:
        def body() -> agent_pb2.StageRestoreResponse:
            handoff = self._handoff()
            first = next(request_iterator, None)
            if not isinstance(first, agent_pb2.CheckpointChunk) or not first.checkpoint_id:
                raise ValueError("the stream's first chunk names no checkpoint")
            name = require_label("container name", first.container_name)
            lazy = None
            if first.lazy_pages_from:
                host, port = pages.split_host_port(first.lazy_pages_from)
                if self.d.lazy_pages_problem or self.d.criu_tls is None:
                    raise Abort(
                        grpc.StatusCode.FAILED_PRECONDITION,
                        f"post-copy: {self.d.lazy_pages_problem or 'no TLS directory for CRIU'}",
                    )
                (state,) = handoff.states(first.checkpoint_id, [name])
                if state.state in (ho.State.STAGED, ho.State.RESTORED):
                    # A second push of a post-copy checkpoint (a source agent that restarted mid-stream): the
                    # first one's pages are gone with its page server, and a restored process cannot take its
                    # memory from a new dump.
                    raise Abort(
                        grpc.StatusCode.FAILED_PRECONDITION,
                        f"post-copy: checkpoint {first.checkpoint_id}/{name} was staged here before; its page "
                        "stream cannot be resumed",
                        REASON_POST_COPY_FAILED,
                    )
                self.d.criu_tls.install()
                lazy = {"address": host, "port": port, "tls": self.d.criu_tls.paths()}
            staged = handoff.stage(
                first.checkpoint_id,
                name,
                transfer.received(first, request_iterator),
                size_bytes=first.expected_size_bytes,
                lazy_pages=lazy,
            )
            if lazy is None:  # post-copy: the restore needs the source's pages, which come after this returns
                remaining = context.time_remaining()
                limit = AWAIT_RESTORE_SECONDS if remaining is None else min(AWAIT_RESTORE_SECONDS, remaining - 1.0)
                waited = time.monotonic()
                outcome = handoff.wait_restore(first.checkpoint_id, name, limit)
                if outcome != "not waiting":
                    log.info(
                        "checkpoint %s/%s: %s %.2fs after staging; the push returns",
                        first.checkpoint_id,
                        name,
                        _RESTORE_OUTCOMES[outcome],
                        time.monotonic() - waited,
                    )
            return agent_pb2.StageRestoreResponse(
                image_bytes=staged.image_bytes,
                rootfs_diff_bytes=staged.rootfs_diff_bytes,
                duration=_duration(staged.seconds),
            )

        return self._call(context, "ReceiveCheckpoint", body)

    def AbortRestore(
        self, request: agent_pb2.AbortRestoreRequest, context: grpc.ServicerContext
    ) -> agent_pb2.AbortRestoreResponse:
        def body() -> agent_pb2.AbortRestoreResponse:
            self._handoff().abort(request.checkpoint_id, request.reason or "the migration was rolled back")
            return agent_pb2.AbortRestoreResponse()

        return self._call(context, "AbortRestore", body)

    def GetProgress(
        self, request: agent_pb2.ProgressRequest, context: grpc.ServicerContext
    ) -> agent_pb2.ProgressResponse:
        def body() -> agent_pb2.ProgressResponse:
            return agent_pb2.ProgressResponse(
                containers=[
                    agent_pb2.ContainerProgress(
                        container_name=step.container,
                        stage=step.stage,
                        bytes_done=step.done,
                        bytes_total=step.total,
                        elapsed=_duration(step.elapsed),
                    )
                    for step in self.d.progress.report(request.checkpoint_id)
                ]
            )

        return self._call(context, "GetProgress", body)

    def GetCapabilities(
        self, request: agent_pb2.GetCapabilitiesRequest, context: grpc.ServicerContext
    ) -> agent_pb2.Capabilities:
        return self._call(context, "GetCapabilities", self._capabilities)

    def _capabilities(self) -> agent_pb2.Capabilities:
        problems = []
        freeze_ok = (
            fz.freezer_root(self.d.cgroup_root) != self.d.cgroup_root
            or (self.d.cgroup_root / "cgroup.controllers").exists()
        )
        if not freeze_ok:
            problems.append(f"no cgroup freezer under {self.d.cgroup_root}")
        if not self.d.criu_version:
            problems.append("criu not found on the agent's PATH (version unknown; the runtime's CRIU is what counts)")
        convert_ok = bool(self.d.runtime_version)
        if not convert_ok:
            problems.append(f"{self.d.images.runtime} not reachable with its CLI: checkpoint images cannot be loaded")
        live_problem = self.d.handoff.usable() if self.d.handoff else "no restore hand-off directory configured"
        if live_problem:
            problems.append(live_problem)
        dump_problem = self.d.dumper.usable() if self.d.dumper else "no runtime dump directory configured"
        if dump_problem:
            problems.append(f"{dump_problem}: the Live engine dumps through the kubelet")
        if self.d.dirty_tracking_problem:
            problems.append(f"{PRECOPY_PROBLEM_PREFIX}{self.d.dirty_tracking_problem}")
        lazy_problem = self.d.lazy_pages_problem or live_problem or dump_problem
        if not lazy_problem and self.d.criu_tls is None:
            lazy_problem = "the agent has no TLS files for CRIU"
        if lazy_problem:
            problems.append(f"{POSTCOPY_PROBLEM_PREFIX}{lazy_problem}")
        return agent_pb2.Capabilities(
            lazy_pages_supported=not lazy_problem,
            live_restore_supported=not live_problem,
            runtime_dump_supported=not dump_problem,
            memory_dirty_tracking=not self.d.dirty_tracking_problem,
            node_name=self.d.node_name,
            agent_version=AGENT_VERSION,
            criu_version=self.d.criu_version,
            runtime_name=self.d.images.runtime,
            runtime_version=self.d.runtime_version,
            checkpoint_supported=True,
            freeze_supported=freeze_ok,
            freeze_hand_off=freeze_ok,
            convert_supported=convert_ok,
            problems=problems,
        )
