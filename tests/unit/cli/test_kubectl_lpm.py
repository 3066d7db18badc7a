"""kubectl-lpm's command line: the contract scripts rely on (the e2e suite drives it against a real cluster)."""

from __future__ import annotations

import pytest

from lpm.cli.client import Cluster
from lpm.cli.errors import EXIT_FAILED, EXIT_USAGE
from lpm.cli.kubectl_lpm import build_parser, main


@pytest.mark.parametrize(
    "argv",
    [
        ["-n", "prod", "migrate", "web-0", "--to", "node-2"],
        ["migrate", "web-0", "--to", "node-2", "-n", "prod"],
        ["migrate", "-n", "prod", "web-0", "--to", "node-2"],
    ],
)
def test_namespace_may_come_before_or_after_the_command(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    assert (args.namespace, args.pod, args.to) == ("prod", "web-0", "node-2")


def test_namespace_defaults_to_default() -> None:
    assert build_parser().parse_args(["list"]).namespace == "default"


def test_migrate_without_a_pod_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["migrate"])
    assert exc.value.code == EXIT_USAGE
    assert "required: POD" in capsys.readouterr().err


def test_unreadable_kubeconfig_is_reported_with_its_exit_code(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope"
    assert main(["--kubeconfig", str(missing), "list"]) == 5
    assert "kubeconfig" in capsys.readouterr().err


class _Recorder(Cluster):
    """Stands in for the API server only to capture the object the command would create (the e2e suite runs
    the same commands against a real cluster)."""

    def __init__(self, *_: object) -> None:  # no kubeconfig, no client
        self.created: list[dict] = []

    def pod(self, ns: str, name: str) -> object:
        from kubernetes.client import V1ObjectMeta, V1Pod, V1PodSpec

        return V1Pod(metadata=V1ObjectMeta(name=name, namespace=ns), spec=V1PodSpec(containers=[], node_name="a"))

    def node(self, name: str) -> object:
        from kubernetes.client import V1Node, V1NodeCondition, V1NodeStatus

        return V1Node(status=V1NodeStatus(conditions=[V1NodeCondition(type="Ready", status="True")]))

    def pod_manifest(self, ns: str, name: str) -> dict:
        return {"metadata": {"name": name, "namespace": ns}, "spec": {"nodeName": "a", "containers": [{"name": "c"}]},
                "status": {"phase": "Running"}}  # fmt: skip

    def nodes(self) -> list[dict]:
        ready = {"conditions": [{"type": "Ready", "status": "True"}]}
        taint = [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]
        return [
            {"metadata": {"name": "a"}, "spec": {}, "status": ready},  # the pod's own node
            {"metadata": {"name": "b"}, "spec": {"unschedulable": True}, "status": ready},  # cordoned
            {"metadata": {"name": "c"}, "spec": {"taints": taint}, "status": ready},  # not tolerated
            {"metadata": {"name": "d"}, "spec": {}, "status": {"conditions": [{"type": "Ready", "status": "False"}]}},
            {"metadata": {"name": "e"}, "spec": {}, "status": ready},
        ]

    def create(self, ns: str, body: dict) -> dict:
        self.created.append(body)
        return {"metadata": {"name": "web-0-x", "namespace": ns}}


def test_migrate_sends_the_ttl_and_defaults_to_keeping_the_record() -> None:
    rec = _Recorder()
    assert main(["migrate", "web-0", "--to", "b", "--ttl", "600"], cluster_factory=lambda *_: rec) == 0
    assert main(["migrate", "web-0", "--to", "b"], cluster_factory=lambda *_: rec) == 0
    with_ttl, without = (body["spec"] for body in rec.created)
    assert with_ttl["ttlSecondsAfterFinished"] == 600
    assert "ttlSecondsAfterFinished" not in without


def test_migrate_without_a_target_picks_a_node_the_pod_could_run_on(capsys: pytest.CaptureFixture[str]) -> None:
    rec = _Recorder()
    assert main(["migrate", "web-0"], cluster_factory=lambda *_: rec) == 0
    assert rec.created[0]["spec"]["targetNode"] == "e"  # not its own, cordoned, tainted or NotReady nodes
    assert "target: e" in capsys.readouterr().out


def test_migrate_without_a_target_says_why_none_fits(capsys: pytest.CaptureFixture[str]) -> None:
    rec = _Recorder()
    rec.nodes = lambda: [{"metadata": {"name": "a"}, "spec": {}, "status": {}}]  # type: ignore[method-assign]
    assert main(["migrate", "web-0"], cluster_factory=lambda *_: rec) == EXIT_FAILED
    err = capsys.readouterr().err
    assert "no other node is Ready, schedulable and tolerated" in err and "--to NODE" in err and not rec.created


def test_migrate_keeps_the_checkpoint_unless_told_to_delete_it_with_the_migration() -> None:
    rec = _Recorder()
    assert main(["migrate", "web-0", "--to", "b"], cluster_factory=lambda *_: rec) == 0
    assert (
        main(["migrate", "web-0", "--to", "b", "--checkpoint-retention", "Delete"], cluster_factory=lambda *_: rec) == 0
    )
    kept, deleted = (body["spec"] for body in rec.created)
    assert kept.get("checkpointRetention", "Retain") == "Retain"
    assert deleted["checkpointRetention"] == "Delete"


def test_an_unknown_checkpoint_retention_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["migrate", "web-0", "--checkpoint-retention", "Forever"])
    assert exc.value.code == EXIT_USAGE
    assert "Retain" in capsys.readouterr().err
