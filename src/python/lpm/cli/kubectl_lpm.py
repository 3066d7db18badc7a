"""kubectl-lpm: start, follow, list and cancel live pod migrations.

Exit codes a script can rely on:
  0  done (for `migrate --wait`: the migration Completed)
  1  the migration Failed (its reason is printed)
  2  usage error
  3  not found (pod, node or PodMigration)
  4  gave up waiting (--timeout); the migration goes on in the cluster
  5  cannot talk to the API server, or it refused the request
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

from lpm.api import constants as c
from lpm.api.codec import DecodeError, decode, encode
from lpm.api.models import (
    CheckpointOptions,
    EligibilityPolicy,
    Engine,
    MigrationPhase,
    PodMigration,
    PodMigrationSpec,
    SourceCleanup,
    SourcePolicy,
)
from lpm.api.views import NodeView, PodView
from lpm.cli.drain import DrainPlan, Taint, plan_drain

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_TIMEOUT = 4
EXIT_API = 5

PHASE_ORDER = [p.value for p in MigrationPhase]
TTL_HELP = "delete the PodMigration this long after it ends (spec.ttlSecondsAfterFinished; default: keep it)"


class CliError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


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


def _pod_node_ready(node: Any) -> tuple[bool, str]:
    for cond in node.status.conditions or []:
        if cond.type == "Ready":
            return cond.status == "True", cond.message or ""
    return False, "no Ready condition reported"


def _phase(obj: dict[str, Any]) -> str:
    return str(obj.get("status", {}).get("phase") or "Pending")


def _fmt_seconds(value: float) -> str:
    return f"{value:.1f}s" if value < 100 else f"{value / 60:.1f}m"


def _summary(obj: dict[str, Any]) -> str:
    st = obj.get("status", {})
    lines = [
        f"PodMigration {obj['metadata']['namespace']}/{obj['metadata']['name']}: {_phase(obj)}",
        f"  pod {obj['spec']['podName']}: {st.get('sourceNode', '?')} -> {obj['spec']['targetNode']}",
    ]
    if st.get("restoredPodName"):
        lines.append(f"  restored pod: {st['restoredPodName']}")
    if st.get("engine"):
        lines.append(f"  engine: {st['engine']}")
    if st.get("reason") or st.get("message"):
        lines.append(f"  reason: {st.get('reason', '')}: {st.get('message', '')}".rstrip(": "))
    if st.get("sourceState"):
        lines.append(f"  source (checked with its node's runtime): {st['sourceState']}")
    if st.get("eligibility"):
        lines.append("  eligibility (checked before anything was frozen):")
        lines.extend(f"    {line}" for line in st["eligibility"])
    durations = st.get("phaseDurationsSeconds") or {}
    if durations:
        ordered = sorted(durations.items(), key=lambda kv: PHASE_ORDER.index(kv[0]) if kv[0] in PHASE_ORDER else 99)
        lines.append("  phases: " + ", ".join(f"{k} {_fmt_seconds(v)}" for k, v in ordered))
        lines.append(f"  total: {_fmt_seconds(sum(durations.values()))}")
    for cond in st.get("conditions") or []:
        lines.append(f"  condition {cond['type']}={cond['status']} {cond.get('reason', '')}: {cond.get('message', '')}")
    return "\n".join(lines)


DRY_RUN_TTL = 60


def cmd_migrate(args: argparse.Namespace, cluster: Cluster, out: Any) -> int:
    pod = cluster.pod(args.namespace, args.pod)
    node = cluster.node(args.to)
    ready, why = _pod_node_ready(node)
    if not ready:
        raise CliError(f'node "{args.to}" is not Ready ({why}); pick another target', EXIT_FAILED)
    if pod.spec.node_name == args.to:
        raise CliError(f'pod "{args.pod}" already runs on node "{args.to}"', EXIT_FAILED)
    spec = PodMigrationSpec(
        pod_name=args.pod,
        target_node=args.to,
        source_policy=SourcePolicy.KEEP_RUNNING if args.keep_running else SourcePolicy.FREEZE,
        source_cleanup=SourceCleanup.RETAIN if args.retain_source else SourceCleanup.DELETE,
        options=CheckpointOptions(tcp_established=args.tcp_established),
        timeout_seconds=args.migration_timeout,
        # A dry run's record is of no use once printed: it goes a minute after it ends.
        ttl_seconds_after_finished=DRY_RUN_TTL if args.dry_run and args.ttl is None else args.ttl,
        eligibility=EligibilityPolicy.WARN if args.force else EligibilityPolicy.ENFORCE,
        engine=Engine(args.engine),
        dry_run=args.dry_run,
    )
    metadata: dict[str, Any] = {"namespace": args.namespace}
    if args.name:
        metadata["name"] = args.name
    else:
        metadata["generateName"] = f"{args.pod[:50]}-"
    body = encode(PodMigration(spec=spec, metadata=metadata))
    body.pop("status", None)
    created = cluster.create(args.namespace, body)
    name = created["metadata"]["name"]
    print(
        f"podmigration.{c.GROUP}/{name} created{' (dry run: nothing is frozen or moved)' if args.dry_run else ''}",
        file=out,
    )
    if not args.wait and not args.dry_run:
        return EXIT_OK
    return follow(cluster, args.namespace, name, args.timeout, out)


def follow(cluster: Cluster, ns: str, name: str, timeout: float, out: Any) -> int:
    """Print each phase as the migration enters it; return the exit code of its outcome."""
    start = time.monotonic()
    last = None
    for obj in cluster.watch(ns, name, timeout):
        phase = _phase(obj)
        if phase != last:
            print(f"[{time.monotonic() - start:6.1f}s] {phase}", file=out, flush=True)
            last = phase
        if phase in (MigrationPhase.COMPLETED.value, MigrationPhase.FAILED.value):
            print(_summary(obj), file=out)
            return EXIT_OK if phase == MigrationPhase.COMPLETED.value else EXIT_FAILED
    raise CliError(
        f'gave up waiting after {timeout:.0f}s; PodMigration "{name}" is still {last}; '
        f"follow it with: kubectl lpm status {name} -n {ns}",
        EXIT_TIMEOUT,
    )


def cmd_status(args: argparse.Namespace, cluster: Cluster, out: Any) -> int:
    if args.name:
        obj = cluster.get(args.namespace, args.name)
        if args.output == "json":
            print(json.dumps(obj, indent=2), file=out)
        else:
            print(_summary(obj), file=out)
        if args.wait:
            return follow(cluster, args.namespace, args.name, args.timeout, out)
        return EXIT_FAILED if _phase(obj) == MigrationPhase.FAILED.value else EXIT_OK
    items = cluster.list(args.namespace)
    for obj in items:
        print(_summary(obj), file=out)
    return EXIT_OK


def cmd_list(args: argparse.Namespace, cluster: Cluster, out: Any) -> int:
    items = cluster.list(None if args.all_namespaces else args.namespace)
    if args.output == "json":
        print(json.dumps(items, indent=2), file=out)
        return EXIT_OK
    rows = [("NAMESPACE", "NAME", "POD", "SOURCE", "TARGET", "PHASE", "REASON")]
    for obj in items:
        try:
            mig = decode(PodMigration, obj)
        except DecodeError as exc:
            rows.append((obj["metadata"]["namespace"], obj["metadata"]["name"], "?", "?", "?", "?", str(exc)))
            continue
        rows.append(
            (
                obj["metadata"]["namespace"],
                obj["metadata"]["name"],
                mig.spec.pod_name,
                mig.status.source_node or "",
                mig.spec.target_node,
                mig.status.phase.value,
                mig.status.reason or "",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip(), file=out)
    return EXIT_OK


def cmd_cancel(args: argparse.Namespace, cluster: Cluster, out: Any) -> int:
    obj = cluster.get(args.namespace, args.name)
    phase = _phase(obj)
    if phase == MigrationPhase.COMPLETED.value:
        raise CliError(f'PodMigration "{args.name}" already Completed; nothing to cancel', EXIT_FAILED)
    # Deleting a running migration makes the controller roll it back (finalizer): restored pod removed,
    # source thawed and left running.
    cluster.delete(args.namespace, args.name)
    print(f"podmigration.{c.GROUP}/{args.name} cancelled (was {phase}); the source pod keeps running", file=out)
    return EXIT_OK


def cmd_drain(args: argparse.Namespace, cluster: Cluster, out: Any) -> int:
    if args.max_parallel < 1:
        raise CliError("--max-parallel must be at least 1", EXIT_USAGE)
    node_objs = cluster.nodes()
    nodes = [NodeView.from_api(n) for n in node_objs]
    source = next((n for n in nodes if n.name == args.node), None)
    if source is None:
        raise CliError(f'node "{args.node}" not found', EXIT_NOT_FOUND)
    plan = plan_drain(
        source.name,
        [PodView.from_api(p) for p in cluster.pods_on_node(source.name, args.pod_selector)],
        nodes,
        {str(n["metadata"]["name"]): Taint.all_from_api(n) for n in node_objs},
        to=args.to,
    )
    print(
        f"node {plan.node}: {len(plan.moves)} pod(s) to migrate, {len(plan.owned)} left to their owners, "
        f"{len(plan.skipped)} skipped, {len(plan.blocked)} cannot be migrated",
        file=out,
    )
    for move in plan.moves:
        print(f"  migrate  {move.pod.namespace}/{move.pod.name} -> {move.target}", file=out)
    for kind, items in (("owner", plan.owned), ("skip", plan.skipped), ("blocked", plan.blocked)):
        for left in items:
            print(f"  {kind:<8} {left.pod.namespace}/{left.pod.name}: {left.why}", file=out)
    if not plan.ok:
        raise CliError(
            f"node {plan.node} cannot be drained: {len(plan.blocked)} pod(s) cannot be migrated (listed above); "
            "nothing was cordoned or migrated",
            EXIT_FAILED,
        )
    if args.dry_run:
        return EXIT_OK
    if not source.unschedulable:
        cluster.cordon(plan.node)
        print(f"node/{plan.node} cordoned (kubectl uncordon {plan.node} when maintenance is done)", file=out)
    failed = _run_moves(cluster, plan, args, out)
    if plan.owned:
        print(
            f"{len(plan.owned)} pod(s) managed by controllers are still on {plan.node}: "
            f"kubectl drain {plan.node} --ignore-daemonsets evicts them",
            file=out,
        )
    if failed:
        raise CliError(f"{failed} migration(s) Failed; their source pods keep running on {plan.node}", EXIT_FAILED)
    return EXIT_OK


def _run_moves(cluster: Cluster, plan: DrainPlan, args: argparse.Namespace, out: Any) -> int:
    """Create the plan's PodMigrations, at most --max-parallel in flight, and follow them all to the end.
    Returns how many Failed."""
    drain_id = _drain_id()
    selector = f"{c.LABEL_DRAIN}={plan.node},{c.LABEL_DRAIN_ID}={drain_id}"
    pending = list(plan.moves)
    in_flight: dict[tuple[str, str], str] = {}  # (namespace, migration name) -> pod
    done: dict[tuple[str, str], dict[str, Any]] = {}
    phases: dict[tuple[str, str], str] = {}
    start = time.monotonic()

    def stamp() -> str:
        return f"[{time.monotonic() - start:6.1f}s]"

    def launch() -> None:
        while pending and len(in_flight) < args.max_parallel:
            move = pending.pop(0)
            spec = PodMigrationSpec(
                pod_name=move.pod.name, target_node=move.target, ttl_seconds_after_finished=args.ttl
            )
            metadata = {
                "namespace": move.pod.namespace,
                "generateName": f"{move.pod.name[:50]}-",
                "labels": {c.LABEL_DRAIN: plan.node, c.LABEL_DRAIN_ID: drain_id},
            }
            body = encode(PodMigration(spec=spec, metadata=metadata))
            body.pop("status", None)
            created = cluster.create(move.pod.namespace, body)
            key = (move.pod.namespace, created["metadata"]["name"])
            in_flight[key] = move.pod.name
            print(f"{stamp()} {key[0]}/{move.pod.name} -> {move.target}: podmigration {key[1]} created", file=out)

    launch()
    if not in_flight:
        return 0
    for event, obj in cluster.watch_selected(selector, args.timeout):
        key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
        if key not in in_flight:
            continue
        # Deleted under us (kubectl lpm cancel): the controller rolls it back, so it ends as a failure.
        phase = MigrationPhase.FAILED.value if event == "DELETED" else _phase(obj)
        if phases.get(key) != phase:
            phases[key] = phase
            note = " (PodMigration deleted: rolled back)" if event == "DELETED" else ""
            print(f"{stamp()} {key[0]}/{in_flight[key]}: {phase}{note}", file=out, flush=True)
        if phase in (MigrationPhase.COMPLETED.value, MigrationPhase.FAILED.value):
            in_flight.pop(key)
            done[key] = obj
            launch()
            if not in_flight:
                break
    else:
        raise CliError(
            f"gave up waiting after {args.timeout:.0f}s with {len(in_flight) + len(pending)} migration(s) "
            f"unfinished; follow them with: kubectl lpm list -A",
            EXIT_TIMEOUT,
        )
    for key, obj in sorted(done.items()):
        st = obj.get("status") or {}
        total = _fmt_seconds(sum((st.get("phaseDurationsSeconds") or {}).values()))
        where = f"now {st['restoredPodName']} on {obj['spec']['targetNode']}" if st.get("restoredPodName") else ""
        detail = where if phases[key] == MigrationPhase.COMPLETED.value else st.get("message", "")
        print(f"{key[0]}/{obj['spec']['podName']}: {phases[key]} in {total} ({key[1]}): {detail}", file=out)
    return sum(1 for key in done if phases[key] == MigrationPhase.FAILED.value)


def _drain_id() -> str:
    return time.strftime("%Y%m%dt%H%M%S", time.gmtime()) + f"-{os.getpid()}"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kubectl lpm",
        description="Live pod migration: move a running pod to another node with its memory intact.",
        epilog=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG or ~/.kube/config)")
    p.add_argument("--context", help="kubeconfig context")
    p.add_argument("-n", "--namespace", default="default", help="namespace (default: default)")
    # -n may also follow the command (`kubectl lpm migrate web -n prod`), as with kubectl itself.
    ns_after = argparse.ArgumentParser(add_help=False)
    ns_after.add_argument("-n", "--namespace", default=argparse.SUPPRESS, help="namespace (default: default)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    m = sub.add_parser(
        "migrate", help="migrate a pod to another node", description="Migrate POD to NODE.", parents=[ns_after]
    )
    m.add_argument("pod", metavar="POD")
    m.add_argument("--to", required=True, metavar="NODE", help="target node")
    m.add_argument("--name", help="PodMigration name (default: generated from the pod name)")
    m.add_argument("--wait", action="store_true", help="follow progress until Completed or Failed")
    m.add_argument("--timeout", type=float, default=600, help="seconds to wait with --wait (default 600)")
    m.add_argument(
        "--migration-timeout",
        type=int,
        default=600,
        help="seconds before the controller gives up and rolls back (default 600)",
    )
    m.add_argument(
        "--keep-running",
        action="store_true",
        help="clone: leave the source running after the checkpoint (its later updates stay there)",
    )
    m.add_argument("--retain-source", action="store_true", help="keep the source pod after the restore")
    m.add_argument(
        "--tcp-established",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="move a pod with established TCP connections (default): those inside the pod survive, those to "
        "outside peers are aborted on the target so both ends reconnect at once; --no-tcp-established refuses "
        "such a pod before anything is frozen",
    )
    m.add_argument("--ttl", type=int, metavar="SECONDS", help=TTL_HELP)
    m.add_argument(
        "--dry-run",
        action="store_true",
        help="only check: pod, nodes, agents and eligibility (connections, tty/stdin, files open in emptyDir); "
        "print the findings, freeze and move nothing (exit 0 eligible, 1 not)",
    )
    m.add_argument(
        "--force",
        action="store_true",
        help="migrate even if the eligibility checks find something that makes CRIU fail (spec.eligibility: "
        "Warn); a failed dump or restore still rolls back and the source keeps running",
    )
    m.add_argument(
        "--engine",
        choices=[e.value for e in Engine],
        default=Engine.AUTO.value,
        help="Live: replacement pod first, restored in place by lpm-runc (RuntimeClass lpm); Image: OCI "
        "checkpoint image restored by the runtime (nodes without lpm-runc, CRI-O); Auto (default): Live where "
        "the target node can",
    )
    m.set_defaults(func=cmd_migrate)

    s = sub.add_parser("status", help="show one migration, or all in the namespace", parents=[ns_after])
    s.add_argument("name", nargs="?", metavar="NAME")
    s.add_argument("--wait", action="store_true", help="follow progress until Completed or Failed")
    s.add_argument("--timeout", type=float, default=600, help="seconds to wait with --wait (default 600)")
    s.add_argument("-o", "--output", choices=["text", "json"], default="text")
    s.set_defaults(func=cmd_status)

    ls = sub.add_parser("list", help="list migrations", parents=[ns_after])
    ls.add_argument("-A", "--all-namespaces", action="store_true")
    ls.add_argument("-o", "--output", choices=["text", "json"], default="text")
    ls.set_defaults(func=cmd_list)

    cn = sub.add_parser("cancel", help="cancel a migration: roll back, the source keeps running", parents=[ns_after])
    cn.add_argument("name", metavar="NAME")
    cn.set_defaults(func=cmd_cancel)

    d = sub.add_parser(
        "drain",
        help="live-migrate every pod LPM can move off a node, after cordoning it",
        description=(
            "Cordon NODE and live-migrate its Running pods that no controller owns, waiting until every "
            "migration ends. DaemonSet, mirror and finished pods are skipped; pods owned by a ReplicaSet, "
            "StatefulSet or Job are left for `kubectl drain`, which evicts them so their owner starts them "
            "elsewhere. If any pod that should move cannot (not Running, no node can take it), nothing is "
            "cordoned or migrated. Exit 0 when every migration Completed, 1 when one Failed or the drain was "
            "refused, 4 on --timeout."
        ),
    )
    d.add_argument("node", metavar="NODE")
    d.add_argument("--to", metavar="NODE", help="send every pod here (default: spread over Ready, schedulable nodes)")
    d.add_argument("-l", "--pod-selector", help="only pods matching this label selector")
    d.add_argument("--max-parallel", type=int, default=2, help="migrations in flight at once (default 2)")
    d.add_argument("--timeout", type=float, default=1800, help="seconds to wait for all migrations (default 1800)")
    d.add_argument("--dry-run", action="store_true", help="print the plan; cordon and migrate nothing")
    d.add_argument("--ttl", type=int, metavar="SECONDS", help=TTL_HELP)
    d.set_defaults(func=cmd_drain)
    return p


def main(argv: list[str] | None = None, out: Any = None, cluster_factory: Any = None) -> int:
    out = out or sys.stdout
    args = build_parser().parse_args(argv)
    try:
        cluster = (cluster_factory or Cluster)(args.kubeconfig, args.context)
        return int(args.func(args, cluster, out))
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130


def _exit() -> NoReturn:
    sys.exit(main())


if __name__ == "__main__":
    _exit()
