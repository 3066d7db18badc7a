"""The admission webhooks' shell: kopf handlers that read what `lpm.controller.admission` decides on, the
webhook server, and the caBundle written into LPM's two webhook configurations at start."""

from __future__ import annotations

import base64
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kopf
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from lpm.api import constants as c
from lpm.api.codec import decode
from lpm.api.models import PodMigration
from lpm.api.placement import Taint, plan_drain
from lpm.api.views import NodeView, PodView
from lpm.controller import admission
from lpm.controller.runtime import Runtime

log = logging.getLogger(__name__)
MUTATING_NAME = "lpm-replacement"
VALIDATING_NAME = "lpm-eviction"


@dataclass(frozen=True)
class WebhookConfig:
    port: int
    cert: str
    key: str
    ca: str | None
    max_migrations_per_node: int


def inject_ca_bundle(rt: Runtime, ca_file: str) -> None:
    """Write the CA into both configurations' caBundle (one webhook each), so the API server trusts the server
    certificate. Missing configurations are logged, not fatal: the webhooks then are simply not called."""
    bundle = base64.b64encode(Path(ca_file).read_bytes()).decode()
    api = client.AdmissionregistrationV1Api(rt.kube.api_client)
    ops = [{"op": "add", "path": "/webhooks/0/clientConfig/caBundle", "value": bundle}]
    for name, patch in (
        (MUTATING_NAME, api.patch_mutating_webhook_configuration),
        (VALIDATING_NAME, api.patch_validating_webhook_configuration),
    ):
        try:
            patch(name, ops)
            log.info("caBundle of webhook configuration %s written", name)
        except ApiException as exc:
            log.warning("cannot write the caBundle of webhook configuration %s: %s %s", name, exc.status, exc.reason)


class _AnswersAreNotErrors(logging.Filter):
    """kopf logs every AdmissionError at ERROR ("Webhook 'eviction' failed permanently: ..."); for LPM a 429
    (retry later) or a 404 (the pod moved) is the answer, not a failure. Kept, at INFO, under this module's
    logger."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if text.startswith("Webhook 'eviction' failed permanently: "):
            log.info("eviction answered: %s", text.split(": ", 1)[1])
            return False
        return True


def configure_server(settings: kopf.OperatorSettings, cfg: WebhookConfig) -> None:
    logging.getLogger("kopf.objects").addFilter(_AnswersAreNotErrors())
    # Every interface of the pod: the API server calls it at the pod IP (Service lpm-controller-webhook).
    settings.admission.server = kopf.WebhookServer(
        addr="0.0.0.0", port=cfg.port, certfile=cfg.cert, pkeyfile=cfg.key  # noqa: S104
    )
    settings.admission.managed = None  # the configurations are LPM's manifests (deploy/kustomize/base/controller)


def _migrations(rt: Runtime, namespace: str | None) -> list[PodMigration]:
    return [decode(PodMigration, obj) for obj in rt.kube.list(c.PLURAL_POD_MIGRATIONS, namespace)]


def register(registry: kopf.OperatorRegistry, rt: Runtime, cfg: WebhookConfig) -> None:
    evictions = threading.Lock()

    @kopf.on.mutate("pods", operations=["CREATE"], id="replacement", registry=registry, ignore_failures=True)
    def replacement(body: Any, patch: kopf.Patch, dryrun: bool, **_: Any) -> None:
        pod = dict(body)
        mark = admission.probe_mark(pod)
        if mark is not None:
            patch.update(mark)
            return
        namespace = str((pod.get("metadata") or {}).get("namespace") or "")
        for m in admission.waiting_for(pod, _migrations(rt, namespace)):
            if rt.kube.get("pods", namespace, m.status.restored_pod_name or "") is not None:
                continue  # that migration has its replacement
            source = rt.kube.get("pods", namespace, m.spec.pod_name)
            wanted = admission.replacement(pod, m, source)
            if wanted is None:
                continue
            patch.update(admission.merge_diff(pod, wanted))
            if not dryrun:
                log.info(
                    "pod of %s in %s becomes %s, the restore target of PodMigration %s",
                    m.status.handover.kind + "/" + m.status.handover.name if m.status.handover else "?",
                    namespace,
                    m.status.restored_pod_name,
                    m.metadata.get("name"),
                )
            return

    @kopf.on.validate(
        "pods", subresource="eviction", operations=["CREATE"], id="eviction", registry=registry, ignore_failures=True
    )
    def eviction(body: Any, dryrun: bool, **_: Any) -> None:
        # kubectl drain evicts a node's pods all at once: one decision at a time, each seeing the migrations the
        # ones before it started, so budgets and the per-node limit hold (one controller replica serves these).
        with evictions:
            _judge_eviction(body, dryrun)

    def _judge_eviction(body: Any, dryrun: bool) -> None:
        meta = dict(body).get("metadata") or {}
        namespace, name = str(meta.get("namespace") or ""), str(meta.get("name") or "")
        pod = rt.kube.get("pods", namespace, name)
        if pod is None or pod.get("metadata", {}).get("labels", {}).get(c.LABEL_MIGRATABLE) != "true":
            return
        view = PodView.from_api(pod)
        nodes = rt.kube.list("nodes", None)
        views = [NodeView.from_api(n) for n in nodes]
        drain = plan_drain(
            view.node_name or "",
            [view],
            views,
            {str(n["metadata"]["name"]): Taint.all_from_api(n) for n in nodes},
        )
        target = drain.moves[0].target if drain.moves else None
        problem = "" if target else next((left.why for left in drain.blocked), "no node takes it")
        every = _migrations(rt, None)
        away = admission.leaving(every, view.node_name or "")
        here = [m for m in every if m.metadata.get("namespace") == namespace]
        moving = {m.spec.pod_name for m in here if not m.status.phase.terminal and m.spec.pod_name != name}
        migrating = [p for p in rt.kube.list("pods", namespace) if p["metadata"]["name"] in moving]
        budget = admission.budget_problem(pod, rt.kube.list("poddisruptionbudgets", namespace), migrating)
        here_cordoned = any(n.name == view.node_name and n.unschedulable for n in views)
        verdict = admission.judge_eviction(
            pod, here, away, cfg.max_migrations_per_node, target, problem, budget, here_cordoned, rt.now()
        )
        if verdict.action == "allow":
            return
        if verdict.action == "moved":
            raise kopf.AdmissionError(verdict.message, code=404)
        if verdict.action == "migrate" and verdict.migration is not None and not dryrun:
            out = rt.kube.create(c.PLURAL_POD_MIGRATIONS, namespace, verdict.migration)
            if not out.ok:
                raise kopf.AdmissionError(f"LPM could not start the migration of pod {name}: {out.message}", code=429)
            log.info("eviction of pod %s/%s: %s", namespace, name, verdict.message)
        raise kopf.AdmissionError(verdict.message, code=429)
