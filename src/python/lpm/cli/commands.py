"""kubectl-lpm's commands: each takes the parsed arguments, a cluster client and where to print, and returns
the exit code."""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any, TextIO

from lpm.api import constants as c
from lpm.api.codec import DecodeError, decode, encode
from lpm.api.models import (
    CheckpointOptions,
    DeletionPolicy,
    EligibilityPolicy,
    Engine,
    MigrationPhase,
    PodMigration,
    PodMigrationSpec,
    PostCopy,
    SourceCleanup,
    SourcePolicy,
)
from lpm.api.placement import DrainPlan, Taint, plan_drain
from lpm.api.views import NodeView, PodView
from lpm.cli.client import Cluster
from lpm.cli.errors import EXIT_FAILED, EXIT_NOT_FOUND, EXIT_OK, EXIT_TIMEOUT, EXIT_USAGE, CliError

PHASE_ORDER = [p.value for p in MigrationPhase]
ENDED = (MigrationPhase.COMPLETED, MigrationPhase.FAILED)


def _pod_node_ready(node: Any) -> tuple[bool, str]:
    for cond in node.status.conditions or []:
        if cond.type == "Ready":
            return cond.status == "True", cond.message or ""
    return False, "no Ready condition reported"


def _phase(obj: dict[str, Any]) -> MigrationPhase | str:
    """A PodMigration's phase; one this version does not know (a newer controller's) stays the server's string."""
    raw = str(obj.get("status", {}).get("phase") or MigrationPhase.PENDING.value)
    try:
        return MigrationPhase(raw)
    except ValueError:
        return raw


def _shown(phase: MigrationPhase | str) -> str:
    return phase.value if isinstance(phase, MigrationPhase) else phase


def _fmt_seconds(value: float) -> str:
    return f"{value:.1f}s" if value < 100 else f"{value / 60:.1f}m"


def _summary(obj: dict[str, Any]) -> str:
    st = obj.get("status", {})
    lines = [
        f"PodMigration {obj['metadata']['namespace']}/{obj['metadata']['name']}: {_shown(_phase(obj))}",
        f"  pod {obj['spec']['podName']}: {st.get('sourceNode', '?')} -> {obj['spec']['targetNode']}",
    ]
    if st.get("restoredPodName"):
        lines.append(f"  restored pod: {st['restoredPodName']}")
    if st.get("engine"):
        post_copy = st.get("postCopyAboveBytes")
        after = f" (post-copy for containers of {post_copy >> 20} MiB or more)" if post_copy and post_copy > 1 else ""
        after = " (post-copy)" if post_copy == 1 else after
        lines.append(f"  engine: {st['engine']}{after}")
    if st.get("progress"):
        lines.append(f"  data: {progress_line(st['progress'])}")
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


def pick_target(cluster: Cluster, namespace: str, name: str) -> str:
    """A node for the pod by the drain's rules (Ready, schedulable, taints tolerated), or why there is none."""
    raw = cluster.pod_manifest(namespace, name)
    pod = PodView.from_api(raw)
    if not pod.node_name:
        raise CliError(f'pod "{name}" is not bound to a node yet; nothing to migrate', EXIT_FAILED)
    node_objs = cluster.nodes()
    plan = plan_drain(
        pod.node_name,
        [pod],
        [NodeView.from_api(n) for n in node_objs],
        {str(n["metadata"]["name"]): Taint.all_from_api(n) for n in node_objs},
    )
    if plan.moves:
        return plan.moves[0].target
    left = (plan.blocked or plan.owned or plan.skipped)[0]
    raise CliError(f'pod "{name}" cannot be migrated: {left.why}; pass --to NODE to choose', EXIT_FAILED)


def cmd_migrate(args: argparse.Namespace, cluster: Cluster, out: TextIO) -> int:
    if args.to is None:
        args.to = pick_target(cluster, args.namespace, args.pod)
        print(f"target: {args.to} (Ready, schedulable, taints tolerated; --to NODE to choose)", file=out)
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
        post_copy=PostCopy(getattr(args, "post_copy", PostCopy.AUTO.value)),
        dry_run=args.dry_run,
        keep_name=args.keep_name,
        checkpoint_retention=DeletionPolicy(args.checkpoint_retention),
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


def _mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


def progress_line(p: dict[str, Any]) -> str:
    """status.progress in words: 'sending 120.0 of 256.0 MiB (95.1 MiB/s, ETA 1.4s)'."""
    stage, done, total = p.get("stage", "?"), float(p.get("bytesDone") or 0), float(p.get("bytesTotal") or 0)
    if stage == "dumping" or not total:
        return f"{stage} (CRIU writes the memory)" if stage == "dumping" else stage
    rate = float(p.get("bytesPerSecond") or 0)
    eta = p.get("etaSeconds")
    tail = f"{_mib(rate)}/s" + (f", ETA {float(eta):.1f}s" if eta is not None else "")
    return f"{stage} {_mib(done)} of {_mib(total)} ({tail})"


def follow(cluster: Cluster, ns: str, name: str, timeout: float, out: TextIO) -> int:
    """Print each phase as the migration enters it; return the exit code of its outcome."""
    start = time.monotonic()
    last = None
    seen_progress = None
    for obj in cluster.watch(ns, name, timeout):
        phase = _phase(obj)
        if _shown(phase) != last:
            last = _shown(phase)
            print(f"[{time.monotonic() - start:6.1f}s] {last}", file=out, flush=True)
        progress = (obj.get("status") or {}).get("progress")
        if progress and progress.get("updatedAt") != seen_progress and phase is MigrationPhase.CHECKPOINTING:
            seen_progress = progress.get("updatedAt")
            print(f"[{time.monotonic() - start:6.1f}s]   {progress_line(progress)}", file=out, flush=True)
        if phase in ENDED:
            print(_summary(obj), file=out)
            return EXIT_OK if phase is MigrationPhase.COMPLETED else EXIT_FAILED
    raise CliError(
        f'gave up waiting after {timeout:.0f}s; PodMigration "{name}" is still {last}; '
        f"follow it with: kubectl lpm status {name} -n {ns}",
        EXIT_TIMEOUT,
    )


def cmd_status(args: argparse.Namespace, cluster: Cluster, out: TextIO) -> int:
    if args.name:
        obj = cluster.get(args.namespace, args.name)
        if args.output == "json":
            print(json.dumps(obj, indent=2), file=out)
        else:
            print(_summary(obj), file=out)
        if args.wait:
            return follow(cluster, args.namespace, args.name, args.timeout, out)
        return EXIT_FAILED if _phase(obj) is MigrationPhase.FAILED else EXIT_OK
    items = cluster.list(args.namespace)
    for obj in items:
        print(_summary(obj), file=out)
    return EXIT_OK


def cmd_list(args: argparse.Namespace, cluster: Cluster, out: TextIO) -> int:
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


def cmd_cancel(args: argparse.Namespace, cluster: Cluster, out: TextIO) -> int:
    obj = cluster.get(args.namespace, args.name)
    phase = _phase(obj)
    if phase is MigrationPhase.COMPLETED:
        raise CliError(f'PodMigration "{args.name}" already Completed; nothing to cancel', EXIT_FAILED)
    # Deleting a running migration makes the controller roll it back (finalizer): restored pod removed,
    # source thawed and left running.
    cluster.delete(args.namespace, args.name)
    print(f"podmigration.{c.GROUP}/{args.name} cancelled (was {_shown(phase)}); the source pod keeps running", file=out)
    return EXIT_OK


def cmd_drain(args: argparse.Namespace, cluster: Cluster, out: TextIO) -> int:
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


def _run_moves(cluster: Cluster, plan: DrainPlan, args: argparse.Namespace, out: TextIO) -> int:
    """Create the plan's PodMigrations, at most --max-parallel in flight, and follow them all to the end.
    Returns how many Failed."""
    drain_id = _drain_id()
    selector = f"{c.LABEL_DRAIN}={plan.node},{c.LABEL_DRAIN_ID}={drain_id}"
    pending = list(plan.moves)
    in_flight: dict[tuple[str, str], str] = {}  # (namespace, migration name) -> pod
    done: dict[tuple[str, str], dict[str, Any]] = {}
    phases: dict[tuple[str, str], MigrationPhase | str] = {}
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
        phase = MigrationPhase.FAILED if event == "DELETED" else _phase(obj)
        if phases.get(key) != phase:
            phases[key] = phase
            note = " (PodMigration deleted: rolled back)" if event == "DELETED" else ""
            print(f"{stamp()} {key[0]}/{in_flight[key]}: {_shown(phase)}{note}", file=out, flush=True)
        if phase in ENDED:
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
        detail = where if phases[key] is MigrationPhase.COMPLETED else st.get("message", "")
        print(f"{key[0]}/{obj['spec']['podName']}: {_shown(phases[key])} in {total} ({key[1]}): {detail}", file=out)
    return sum(1 for key in done if phases[key] is MigrationPhase.FAILED)


def _drain_id() -> str:
    return time.strftime("%Y%m%dt%H%M%S", time.gmtime()) + f"-{os.getpid()}"
