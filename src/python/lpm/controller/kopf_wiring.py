"""Wires the three reconcilers into kopf: watches, a resync timer per unfinished object, finalizers, peering.

Why kopf: it is the maintained Python operator runtime (watch streams with resumption, per-object
serialization, finalizer handling, retries with backoff, peering for active/standby replicas), so LPM's
code is only the reconcilers (controller/reconciler.py). Handlers are plain functions run in kopf's thread pool.

- `on.event` reconciles on every change of the object (including the controller's own status writes, which is
  how a migration moves from one phase to the next without waiting);
- a timer re-checks every unfinished object each `resync_seconds` (pods becoming Running, agents coming
  back); both go through `Runtime.reconcile`, so one object never has two cycles at once;
- kopf's finalizer is LPM's (`lpm.my.domain/cleanup`), and `on.delete` runs the kind's finalizer decider
  (`Runtime.finalize`);
- kopf's own bookkeeping lives in annotations under lpm.my.domain (the CRD schemas prune unknown status).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import kopf

from lpm.api import constants as c
from lpm.api.models import CheckpointPhase, MigrationPhase
from lpm.controller import retention, webhooks
from lpm.controller.containercheckpoint.handlers import CONTAINERCHECKPOINTS
from lpm.controller.orphans import OrphanSweeper
from lpm.controller.podcheckpoint.handlers import PODCHECKPOINTS
from lpm.controller.podmigration import handlers as podmigration
from lpm.controller.podmigration.handlers import PODMIGRATIONS
from lpm.controller.reconciler import Reconciler
from lpm.controller.restored_pods import RestoredPodWatcher
from lpm.controller.runtime import Runtime

log = logging.getLogger(__name__)
# Phases after which an object is left alone (kopf filters on the raw body, so these are its strings).
TERMINAL = frozenset(p.value for p in (*MigrationPhase, *CheckpointPhase) if p.terminal)
TTL_CHECK_SECONDS = 5.0  # how late a ttlSecondsAfterFinished deletion may be
PROGRESS_SECONDS = 1.0  # how often a migration's progress is refreshed while it checkpoints
BATCH_WINDOW_SECONDS = 0.005  # see configure() below
CANCELLATION_POLLING_SECONDS = 1.0  # see configure() below
KINDS: tuple[Reconciler[Any], ...] = (PODMIGRATIONS, PODCHECKPOINTS, CONTAINERCHECKPOINTS)


def _active(body: Any, **_: Any) -> bool:
    return (body.get("status") or {}).get("phase") not in TERMINAL


def build_registry(
    rt: Runtime,
    *,
    resync_seconds: float,
    workers: int,
    peering: str,
    priority: int = 0,
    retention_policy: retention.RetentionPolicy | None = None,
    webhook: webhooks.WebhookConfig | None = None,
) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.persistence.finalizer = c.FINALIZER
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=c.GROUP)
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=c.GROUP)
        settings.posting.level = logging.WARNING  # LPM posts its own Events on phase changes
        settings.execution.max_workers = workers
        settings.peering.name = peering
        settings.peering.mandatory = False
        # Replicas with equal priorities would all pause; distinct ones make the highest the active replica.
        settings.peering.priority = priority
        # kopf waits batch_window (default 0.1 s) after an object's event for more before it reconciles. A
        # migration crosses five such hops while its source is frozen (freeze, checkpoint, sealed, staged,
        # restored): 0.5 s of downtime spent waiting. The deciders are idempotent, so reacting to every event
        # costs only a few more reconciles when events come in bursts.
        settings.batching.batch_window = BATCH_WINDOW_SECONDS
        # A deleted object keeps kopf's finalizer until its timers have exited. A sync tick runs in a worker thread
        # and cannot exit at once, and kopf looks again only after cancellation_polling (60 s by default): an
        # object deleted during a tick (a migration's 1 s progress tick, a checkpoint's retention sweep) stayed
        # a minute. Look again every second instead (each look is one patch of the object).
        settings.background.cancellation_polling = CANCELLATION_POLLING_SECONDS
        settings.watching.server_timeout = 300
        settings.networking.request_timeout = 60
        if webhook is not None:
            webhooks.configure_server(settings, webhook)
            if webhook.ca:
                webhooks.inject_ca_bundle(rt, webhook.ca)

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        cfg = rt.kube.api_client.configuration
        auth = (cfg.api_key or {}).get("authorization") or ""
        scheme, _sep, token = auth.partition(" ")
        return kopf.ConnectionInfo(
            server=cfg.host,
            ca_path=cfg.ssl_ca_cert,
            insecure=not cfg.verify_ssl,
            scheme=scheme or None,
            token=token or None,
            certificate_path=cfg.cert_file,
            private_key_path=cfg.key_file,
            default_namespace="default",
        )

    for rec in KINDS:
        _register(registry, rt, rec, resync_seconds)
    if webhook is not None:
        webhooks.register(registry, rt, webhook)

    # Finished migrations with spec.ttlSecondsAfterFinished: checked on a timer of their own, since the resync
    # timer stops once an object is finished.
    def expire(**kw: Any) -> None:
        podmigration.expire(rt, dict(kw["body"]))

    kopf.timer(
        c.GROUP,
        c.VERSION,
        c.PLURAL_POD_MIGRATIONS,
        registry=registry,
        interval=TTL_CHECK_SECONDS,
        when=_expiring,
        id="ttl",
    )(expire)

    # Migrations taking their checkpoint: reconciled every second, so status.progress (bytes, rate, ETA) moves.
    def progress(**kw: Any) -> None:
        rt.reconcile(PODMIGRATIONS, kw["namespace"], kw["name"])

    kopf.timer(
        c.GROUP,
        c.VERSION,
        c.PLURAL_POD_MIGRATIONS,
        registry=registry,
        interval=PROGRESS_SECONDS,
        when=lambda body, **_: (body.get("status") or {}).get("phase") == MigrationPhase.CHECKPOINTING.value,
        id="progress",
    )(progress)

    # Finished PodCheckpoints: expired by their retention policy (lpm.controller.retention).
    default_retention = retention_policy or retention.RetentionPolicy()

    def retain(**kw: Any) -> None:
        retention.sweep(rt, dict(kw["body"]), default_retention)

    kopf.timer(
        c.GROUP,
        c.VERSION,
        c.PLURAL_POD_CHECKPOINTS,
        registry=registry,
        interval=retention.CHECK_SECONDS,
        when=lambda body, **_: not _active(body),
        id="retention",
    )(retain)
    return registry


def _expiring(body: Any, **_: Any) -> bool:
    return not _active(body) and (body.get("spec") or {}).get("ttlSecondsAfterFinished") is not None


# A child's change is news for its owner: reconcile the owner at once instead of at its next resync.
_OWNER_KINDS: dict[str, Reconciler[Any]] = {rec.kind: rec for rec in (PODMIGRATIONS, PODCHECKPOINTS)}


def _poke_owners(rt: Runtime, namespace: str, body: Any) -> None:
    for ref in (body.get("metadata") or {}).get("ownerReferences") or []:
        owner = _OWNER_KINDS.get(ref.get("kind"))
        if owner is not None and ref.get("apiVersion") == c.API_VERSION:
            rt.reconcile(owner, namespace, ref["name"])


def _register(registry: kopf.OperatorRegistry, rt: Runtime, rec: Reconciler[Any], resync: float) -> None:
    # kopf passes everything as keyword arguments; these take what they need.
    plural, seen_ttl = rec.plural, 3 * resync + 5

    def tick(**kw: Any) -> None:
        rt.note_seen((plural, kw["namespace"], kw["name"]), seen_ttl)
        rt.reconcile(rec, kw["namespace"], kw["name"])

    def changed(**kw: Any) -> None:
        if kw["type"] == "DELETED":
            return
        rt.note_seen((plural, kw["namespace"], kw["name"]), seen_ttl)
        if _active(kw["body"]):
            rt.reconcile(rec, kw["namespace"], kw["name"])
        _poke_owners(rt, kw["namespace"], kw["body"])

    def deleting(**kw: Any) -> None:
        if not rt.finalize(rec, kw["namespace"], kw["name"]):
            raise kopf.TemporaryError("waiting for cleanup to finish", delay=1)

    kopf.timer(c.GROUP, c.VERSION, plural, registry=registry, interval=resync, when=_active, id="resync")(tick)
    kopf.on.event(c.GROUP, c.VERSION, plural, registry=registry, id="changed")(changed)
    kopf.on.delete(c.GROUP, c.VERSION, plural, registry=registry, id="cleanup", backoff=1)(deleting)


def run(
    rt: Runtime,
    *,
    namespace: str | None,
    standalone: bool,
    peering: str,
    resync_seconds: float,
    workers: int,
    priority: int = 0,
    retention_policy: retention.RetentionPolicy | None = None,
    orphan_sweep: tuple[float, float] = (0.0, 0.0),
    webhook: webhooks.WebhookConfig | None = None,
    liveness_endpoint: str | None = None,
    stop_flag: threading.Event | None = None,
    ready_flag: threading.Event | None = None,
) -> None:
    """Run the operator in the calling thread until `stop_flag` is set (or forever)."""
    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)  # "Timer succeeded" on every tick is noise
    registry = build_registry(
        rt,
        resync_seconds=resync_seconds,
        workers=workers,
        peering=peering,
        priority=priority,
        retention_policy=retention_policy,
        webhook=webhook,
    )
    watcher_stop = threading.Event()
    RestoredPodWatcher(rt, namespace, watcher_stop).start()
    interval, grace = orphan_sweep
    if interval > 0 and namespace is None:  # in one namespace, other namespaces' objects would look gone
        OrphanSweeper(rt, interval, grace, watcher_stop).start()
    try:
        _run_kopf(registry, namespace, standalone, peering, priority, liveness_endpoint, stop_flag, ready_flag)
    finally:
        watcher_stop.set()


def _run_kopf(
    registry: kopf.OperatorRegistry,
    namespace: str | None,
    standalone: bool,
    peering: str,
    priority: int,
    liveness_endpoint: str | None,
    stop_flag: threading.Event | None,
    ready_flag: threading.Event | None,
) -> None:
    asyncio.run(
        kopf.operator(
            registry=registry,
            standalone=standalone,
            peering_name=peering,
            priority=priority,
            clusterwide=namespace is None,
            namespaces=[namespace] if namespace else (),
            liveness_endpoint=liveness_endpoint,
            stop_flag=stop_flag,
            ready_flag=ready_flag,
        )
    )
