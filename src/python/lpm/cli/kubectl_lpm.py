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
import enum
import sys
from collections.abc import Callable
from typing import NoReturn, TextIO

from lpm.api.models import DeletionPolicy, Engine, PostCopy
from lpm.cli.client import Cluster
from lpm.cli.commands import cmd_cancel, cmd_drain, cmd_list, cmd_migrate, cmd_status
from lpm.cli.errors import CliError

TTL_HELP = "delete the PodMigration this long after it ends (spec.ttlSecondsAfterFinished; default: keep it)"


def _enum_flag(parser: argparse.ArgumentParser, flag: str, default: enum.Enum, help: str) -> None:
    """A flag whose values are those of `default`'s enum (a CRD field's), `default` when not given."""
    parser.add_argument(flag, choices=[e.value for e in type(default)], default=default.value, help=help)


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
    m.add_argument(
        "--to",
        metavar="NODE",
        help="target node (default: picked as `kubectl lpm drain` picks one: another node that is Ready, "
        "schedulable and whose NoSchedule/NoExecute taints the pod tolerates; the first by name)",
    )
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
        "--keep-name",
        action="store_true",
        help="restore under the pod's own name, as a StatefulSet's pod always is (the default names the copy "
        "<pod>-<5 hex>); costs downtime, since the new sandbox is made only once the frozen source is gone, and "
        "a restore that fails after that cannot roll back",
    )
    m.add_argument(
        "--tcp-established",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="move a pod with established TCP connections (default): those inside the pod survive, those to "
        "outside peers are aborted on the target so both ends reconnect at once; --no-tcp-established refuses "
        "such a pod before anything is frozen",
    )
    m.add_argument("--ttl", type=int, metavar="SECONDS", help=TTL_HELP)
    _enum_flag(
        m,
        "--checkpoint-retention",
        DeletionPolicy.RETAIN,
        "Retain (default): keep the stored checkpoint (process memory, sealed) after the migration, to "
        "restore or inspect later, until its PodCheckpointContent is deleted; Delete: remove it with the "
        "PodMigration (a checkpoint as large as the pod's memory stays in the repository otherwise)",
    )
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
    _enum_flag(
        m,
        "--engine",
        Engine.AUTO,
        "Live: replacement pod first, restored in place by lpm-runc (RuntimeClass lpm); Image: OCI "
        "checkpoint image restored by the runtime (nodes without lpm-runc, CRI-O); Auto (default): Live where "
        "the target node can",
    )
    _enum_flag(
        m,
        "--post-copy",
        PostCopy.AUTO,
        "Live engine: move a container's memory after its restore (CRIU lazy pages), so that the source is "
        "frozen only while the rest is copied. Auto (default): containers holding 256 MiB or more, where both "
        "nodes can and the pod runs under RuntimeClass lpm; Always: any size; Never: copy every page while frozen",
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
            "Cordon NODE and live-migrate its Running pods that no controller owns, and those of ReplicaSets "
            "(Deployments), StatefulSets and Jobs that opted in (label lpm.my.domain/migratable=true), waiting "
            "until every migration ends. DaemonSet, mirror and finished pods are skipped; other owned pods are "
            "left for `kubectl drain`, which evicts them so their owner starts them elsewhere. If any pod that "
            "should move cannot (not Running, no node can take it), nothing is cordoned or migrated. Exit 0 "
            "when every migration Completed, 1 when one Failed or the drain was refused, 4 on --timeout."
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


def main(
    argv: list[str] | None = None,
    out: TextIO | None = None,
    cluster_factory: Callable[[str | None, str | None], Cluster] = Cluster,
) -> int:
    out = out or sys.stdout
    args = build_parser().parse_args(argv)
    try:
        cluster = cluster_factory(args.kubeconfig, args.context)
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
