"""The controller's only door to the Kubernetes API (official `kubernetes` client), as plain JSON dicts.

Errors become `Outcome`s with a reason a user can act on; every write is counted (`writes`, and the
Prometheus counter `lpm_controller_api_writes_total`), which the scale benchmark reports per migration.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from prometheus_client import Counter as PromCounter

from lpm.api import constants as c
from lpm.app import clock
from lpm.controller.effects import Outcome

log = logging.getLogger(__name__)

API_WRITES = PromCounter(
    "lpm_controller_api_writes_total", "Kubernetes API writes by the controller", ["verb", "resource"]
)


@dataclass(frozen=True)
class Resource:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool


RESOURCES: dict[str, Resource] = {
    r.plural: r
    for r in (
        Resource("", "v1", "pods", "Pod", True),
        Resource("", "v1", "nodes", "Node", False),
        Resource("", "v1", "namespaces", "Namespace", False),
        Resource("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget", True),
        Resource(c.GROUP, c.VERSION, c.PLURAL_POD_MIGRATIONS, c.KIND_POD_MIGRATION, True),
        Resource(c.GROUP, c.VERSION, c.PLURAL_POD_CHECKPOINTS, c.KIND_POD_CHECKPOINT, True),
        Resource(c.GROUP, c.VERSION, c.PLURAL_CONTAINER_CHECKPOINTS, c.KIND_CONTAINER_CHECKPOINT, True),
        Resource(c.GROUP, c.VERSION, c.PLURAL_POD_CHECKPOINT_CONTENTS, c.KIND_POD_CHECKPOINT_CONTENT, False),
        Resource(
            c.GROUP, c.VERSION, c.PLURAL_CONTAINER_CHECKPOINT_CONTENTS, c.KIND_CONTAINER_CHECKPOINT_CONTENT, False
        ),
    )
}


def _reason(exc: ApiException) -> tuple[str, str]:
    try:
        body = json.loads(exc.body or "{}")
    except (TypeError, ValueError):
        body = {}
    return str(body.get("reason") or exc.reason or "ApiError"), str(body.get("message") or exc.reason or exc)


def api_outcome(exc: Exception, verb: str, what: str) -> Outcome:
    """An API failure as a value: retryable when waiting may fix it, with a hint when a person must."""
    if not isinstance(exc, ApiException):
        return Outcome.failure("ApiUnavailable", f"{verb} {what}: {exc}", retryable=True)
    reason, message = _reason(exc)
    if exc.status == 403:
        return Outcome.failure(
            "Forbidden",
            f"{verb} {what}: {message}; grant the controller's ServiceAccount RBAC for it",
            retryable=False,
        )
    if exc.status == 422:
        return Outcome.failure("Invalid", f"{verb} {what}: {message}", retryable=False)
    if exc.status in (409, 429) or (exc.status or 0) >= 500:
        return Outcome.failure(reason, f"{verb} {what}: {message}", retryable=True)
    return Outcome.failure(reason, f"{verb} {what}: {message}", retryable=False)


class Kube:
    def __init__(self, api_client: client.ApiClient, component: str = "lpm-controller") -> None:
        self.api_client = api_client
        self.core = client.CoreV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)
        self.component = component
        self.writes: Counter[str] = Counter()
        self._lock = threading.Lock()

    def _count(self, verb: str, plural: str) -> None:
        with self._lock:
            self.writes[f"{verb} {plural}"] += 1
        API_WRITES.labels(verb, plural).inc()

    # --------------------------------------------------------------------------------------------- reads
    def get(self, plural: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        r = RESOURCES[plural]
        try:
            if r.group == "":
                if plural == "pods":
                    resp = self.core.read_namespaced_pod(name, namespace, _preload_content=False)
                elif plural == "namespaces":
                    resp = self.core.read_namespace(name, _preload_content=False)
                else:
                    resp = self.core.read_node(name, _preload_content=False)
                return dict(json.loads(resp.data))
            if r.namespaced:
                return dict(self.custom.get_namespaced_custom_object(r.group, r.version, namespace, plural, name))
            return dict(self.custom.get_cluster_custom_object(r.group, r.version, plural, name))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def list(
        self, plural: str, namespace: str | None, label_selector: str = "", field_selector: str = ""
    ) -> list[dict[str, Any]]:
        r = RESOURCES[plural]
        kw: dict[str, Any] = {}
        if label_selector:
            kw["label_selector"] = label_selector
        if field_selector:
            kw["field_selector"] = field_selector
        if r.group == "":
            if plural == "pods":
                resp = self.core.list_namespaced_pod(namespace, _preload_content=False, **kw)
            else:
                resp = self.core.list_node(_preload_content=False, **kw)
            return list(json.loads(resp.data).get("items") or [])
        if r.namespaced and namespace is not None:
            out = self.custom.list_namespaced_custom_object(r.group, r.version, namespace, plural, **kw)
        else:
            out = self.custom.list_cluster_custom_object(r.group, r.version, plural, **kw)
        return list(out.get("items") or [])

    # -------------------------------------------------------------------------------------------- writes
    def create(self, plural: str, namespace: str | None, body: Mapping[str, Any]) -> Outcome:
        r = RESOURCES[plural]
        what = f"{r.kind} {body.get('metadata', {}).get('name')}"
        self._count("create", plural)
        try:
            if r.group == "":
                self.core.create_namespaced_pod(namespace, dict(body), _preload_content=False)
            elif r.namespaced:
                self.custom.create_namespaced_custom_object(r.group, r.version, namespace, plural, dict(body))
            else:
                self.custom.create_cluster_custom_object(r.group, r.version, plural, dict(body))
        except ApiException as exc:
            if exc.status == 409 and _reason(exc)[0] == "AlreadyExists":
                return Outcome.success(reason="AlreadyExists")
            return api_outcome(exc, "create", what)
        except Exception as exc:  # connection errors: the cycle is retried
            return api_outcome(exc, "create", what)
        return Outcome.success()

    def delete(
        self, plural: str, namespace: str | None, name: str, uid: str | None = None, grace: int | None = None
    ) -> Outcome:
        r = RESOURCES[plural]
        opts = client.V1DeleteOptions(
            preconditions=client.V1Preconditions(uid=uid) if uid else None,
            grace_period_seconds=grace,
            propagation_policy="Background",
        )
        self._count("delete", plural)
        try:
            if r.group == "":
                self.core.delete_namespaced_pod(name, namespace, body=opts, _preload_content=False)
            elif r.namespaced:
                self.custom.delete_namespaced_custom_object(r.group, r.version, namespace, plural, name, body=opts)
            else:
                self.custom.delete_cluster_custom_object(r.group, r.version, plural, name, body=opts)
        except ApiException as exc:
            if exc.status == 404:
                return Outcome.success(reason="NotFound")
            if exc.status == 409 and uid:  # UID precondition failed: the name now belongs to another object
                return Outcome.success(reason="Replaced")
            return api_outcome(exc, "delete", f"{r.kind} {name}")
        except Exception as exc:
            return api_outcome(exc, "delete", f"{r.kind} {name}")
        return Outcome.success()

    def patch(self, plural: str, namespace: str | None, name: str, body: Mapping[str, Any]) -> Outcome:
        """A merge patch of one of LPM's own objects (not its status)."""
        r = RESOURCES[plural]
        self._count("patch", plural)
        try:
            if r.namespaced:
                self.custom.patch_namespaced_custom_object(r.group, r.version, namespace, plural, name, dict(body))
            else:
                self.custom.patch_cluster_custom_object(r.group, r.version, plural, name, dict(body))
        except ApiException as exc:
            if exc.status == 404:
                return Outcome.success(reason="NotFound")
            return api_outcome(exc, "patch", f"{r.kind} {name}")
        except Exception as exc:
            return api_outcome(exc, "patch", f"{r.kind} {name}")
        return Outcome.success()

    def patch_pod(self, namespace: str, name: str, body: Mapping[str, Any]) -> Outcome:
        """A merge patch of a pod's metadata; a metadata.uid in `body` makes it apply to that very pod only."""
        self._count("patch", "pods")
        try:
            self.core.patch_namespaced_pod(name, namespace, dict(body), _preload_content=False)
        except ApiException as exc:
            return api_outcome(exc, "patch", f"Pod {name}")
        except Exception as exc:
            return api_outcome(exc, "patch", f"Pod {name}")
        return Outcome.success()

    def dry_run_create_pod(self, namespace: str, body: Mapping[str, Any]) -> Outcome:
        """Create `body` with dryRun=All: admission (webhooks included) runs, nothing is stored. The outcome's
        value is the pod as admission left it."""
        try:
            resp = self.core.create_namespaced_pod(namespace, dict(body), dry_run="All", _preload_content=False)
        except ApiException as exc:
            return api_outcome(exc, "dry-run create", f"Pod {body.get('metadata', {}).get('name')}")
        except Exception as exc:
            return api_outcome(exc, "dry-run create", f"Pod {body.get('metadata', {}).get('name')}")
        return Outcome.success(dict(json.loads(resp.data)))

    def replace_status(self, plural: str, obj: Mapping[str, Any], status: Mapping[str, Any]) -> bool:
        """PUT the status subresource, guarded by the resourceVersion read this cycle. False on conflict."""
        r = RESOURCES[plural]
        meta = obj["metadata"]
        body = {"apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"), "metadata": meta, "status": status}
        self._count("status", plural)
        try:
            if r.namespaced:
                self.custom.replace_namespaced_custom_object_status(
                    r.group, r.version, meta["namespace"], plural, meta["name"], body
                )
            else:
                self.custom.replace_cluster_custom_object_status(r.group, r.version, plural, meta["name"], body)
        except ApiException as exc:
            if exc.status in (404, 409):
                return False
            raise
        return True

    def mark_content_ready(self, plural: str, name: str) -> Outcome:
        r = RESOURCES[plural]
        self._count("status", plural)
        try:
            self.custom.patch_cluster_custom_object_status(
                r.group, r.version, plural, name, {"status": {"readyToUse": True}}
            )
        except Exception as exc:
            return api_outcome(exc, "mark ready", f"{r.kind} {name}")
        return Outcome.success()

    def emit_event(self, obj: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        meta = obj.get("metadata") or {}
        namespace = meta.get("namespace") or "default"
        now = clock.fmt(clock.utcnow())
        event = {
            "metadata": {"generateName": f"{meta.get('name', 'lpm')}.", "namespace": namespace},
            "involvedObject": {
                "apiVersion": obj.get("apiVersion"),
                "kind": obj.get("kind"),
                "name": meta.get("name"),
                "namespace": meta.get("namespace"),
                "uid": meta.get("uid"),
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": self.component},
            "reportingComponent": f"{c.GROUP}/controller",
            "reportingInstance": self.component,
            "firstTimestamp": now[:19] + "Z",
            "lastTimestamp": now[:19] + "Z",
            "count": 1,
        }
        self._count("create", "events")
        try:
            self.core.create_namespaced_event(namespace, event, _preload_content=False)
        except Exception as exc:  # events are best effort: status carries the same facts
            log.warning("could not post event %s for %s: %s", reason, meta.get("name"), exc)
