"""The cluster client of kubectl-lpm: the few API calls it makes, through the official client, with API errors
turned into CliErrors (not found, refused, unreachable)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

from lpm.api import constants as c
from lpm.cli.errors import EXIT_API, EXIT_NOT_FOUND, CliError


class Cluster:
    """The few API calls the plugin makes, through the official client."""

    def __init__(self, kubeconfig: str | None, context: str | None) -> None:
        from kubernetes import client, config

        try:
            config.load_kube_config(config_file=kubeconfig, context=context)
        except Exception as exc:  # the client raises several unrelated types for a missing or bad config
            raise CliError(f"cannot load kubeconfig: {exc}", EXIT_API) from None
        self.core = client.CoreV1Api()
        self.custom = client.CustomObjectsApi()
        self._client = client

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        from kubernetes.client.exceptions import ApiException

        try:
            return fn()
        except ApiException as exc:
            if exc.status == 404:
                raise CliError(f"{what} not found", EXIT_NOT_FOUND) from None
            raise CliError(f"{what}: the API server answered {exc.status}: {_api_message(exc)}", EXIT_API) from None
        except OSError as exc:
            raise CliError(f"{what}: cannot reach the API server: {exc}", EXIT_API) from None

    def pod(self, ns: str, name: str) -> Any:
        return self._call(f'pod "{name}" in namespace "{ns}"', lambda: self.core.read_namespaced_pod(name, ns))

    def pod_manifest(self, ns: str, name: str) -> dict[str, Any]:
        """The pod as the API serves it (camelCase keys), for the views shared with the controller."""
        return dict(self.core.api_client.sanitize_for_serialization(self.pod(ns, name)))

    def node(self, name: str) -> Any:
        return self._call(f'node "{name}"', lambda: self.core.read_node(name))

    def pods_on_node(self, node: str, selector: str | None) -> list[dict[str, Any]]:
        res = self._call(
            f'pods on node "{node}"',
            lambda: self.core.list_pod_for_all_namespaces(
                field_selector=f"spec.nodeName={node}", label_selector=selector or ""
            ),
        )
        return [self.core.api_client.sanitize_for_serialization(p) for p in res.items]

    def nodes(self) -> list[dict[str, Any]]:
        res = self._call("listing nodes", lambda: self.core.list_node())
        return [self.core.api_client.sanitize_for_serialization(n) for n in res.items]

    def create(self, ns: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._call(
            "creating the PodMigration",
            lambda: self.custom.create_namespaced_custom_object(c.GROUP, c.VERSION, ns, c.PLURAL_POD_MIGRATIONS, body),
        )

    def get(self, ns: str, name: str) -> dict[str, Any]:
        return self._call(
            f'PodMigration "{name}" in namespace "{ns}"',
            lambda: self.custom.get_namespaced_custom_object(c.GROUP, c.VERSION, ns, c.PLURAL_POD_MIGRATIONS, name),
        )

    def list(self, ns: str | None) -> list[dict[str, Any]]:
        if ns is None:
            res = self._call(
                "listing PodMigrations",
                lambda: self.custom.list_cluster_custom_object(c.GROUP, c.VERSION, c.PLURAL_POD_MIGRATIONS),
            )
        else:
            res = self._call(
                "listing PodMigrations",
                lambda: self.custom.list_namespaced_custom_object(c.GROUP, c.VERSION, ns, c.PLURAL_POD_MIGRATIONS),
            )
        return list(res.get("items", []))

    def delete(self, ns: str, name: str) -> None:
        self._call(
            f'PodMigration "{name}" in namespace "{ns}"',
            lambda: self.custom.delete_namespaced_custom_object(c.GROUP, c.VERSION, ns, c.PLURAL_POD_MIGRATIONS, name),
        )

    def cordon(self, node: str) -> None:
        self._call(f'cordoning node "{node}"', lambda: self.core.patch_node(node, {"spec": {"unschedulable": True}}))

    def watch_selected(self, selector: str, timeout: float) -> Iterator[tuple[str, dict[str, Any]]]:
        """Yield (event type, PodMigration) for every PodMigration matching `selector`, in all namespaces, each
        time one changes; a re-list (as ADDED) whenever the watch expires or drops."""
        from kubernetes import watch

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            listed = self._call(
                "listing PodMigrations",
                lambda: self.custom.list_cluster_custom_object(
                    c.GROUP, c.VERSION, c.PLURAL_POD_MIGRATIONS, label_selector=selector
                ),
            )
            for item in listed.get("items", []):
                yield "ADDED", item
            stream = watch.Watch().stream(
                self.custom.list_cluster_custom_object,
                c.GROUP,
                c.VERSION,
                c.PLURAL_POD_MIGRATIONS,
                label_selector=selector,
                resource_version=listed["metadata"].get("resourceVersion"),
                timeout_seconds=max(1, min(int(deadline - time.monotonic()), 30)),
            )
            try:
                for event in stream:
                    if event["type"] in ("ADDED", "MODIFIED", "DELETED"):
                        yield event["type"], event["object"]
            except Exception:  # a dropped or expired watch: re-list and go on until the deadline
                time.sleep(1)

    def watch(self, ns: str, name: str, timeout: float) -> Iterator[dict[str, Any]]:
        """Yield the PodMigration each time it changes, re-listing after watch expiries."""
        from kubernetes import watch

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            w = watch.Watch()
            remaining = max(1, int(deadline - time.monotonic()))
            stream = w.stream(
                self.custom.list_namespaced_custom_object,
                c.GROUP,
                c.VERSION,
                ns,
                c.PLURAL_POD_MIGRATIONS,
                field_selector=f"metadata.name={name}",
                timeout_seconds=min(remaining, 60),
            )
            try:
                for event in stream:
                    if event["type"] == "DELETED":
                        raise CliError(f'PodMigration "{name}" was deleted', EXIT_NOT_FOUND)
                    yield event["object"]
            except CliError:
                raise
            except Exception:  # a dropped watch connection: re-list and go on until the deadline
                time.sleep(1)
                yield self.get(ns, name)


def _api_message(exc: Any) -> str:
    try:
        return str(json.loads(exc.body).get("message", exc.reason))
    except (TypeError, ValueError, AttributeError):
        return str(exc.reason)
