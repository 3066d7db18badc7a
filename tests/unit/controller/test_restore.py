from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from lpm.api import constants as c
from lpm.api.names import is_dns1123_label
from lpm.controller.podmigration.restore import build_restored_pod, original_name, restored_pod_name

SOURCE = {
    "metadata": {
        "name": "web",
        "namespace": "ns",
        "uid": "u",
        "resourceVersion": "9",
        "labels": {"app": "web"},
        "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}", "team": "a"},
        "ownerReferences": [{"kind": "ReplicaSet", "name": "rs", "uid": "x"}],
    },
    "spec": {
        "nodeName": "node-a",
        "nodeSelector": {"kubernetes.io/hostname": "node-a", "disk": "ssd"},
        "affinity": {"nodeAffinity": {"x": 1}, "podAntiAffinity": {"y": 2}},
        "containers": [{"name": "app", "image": "img:1", "imagePullPolicy": "Always"}],
        "ephemeralContainers": [{"name": "debug"}],
    },
    "status": {"phase": "Running", "podIP": "10.0.0.1"},
}


def test_restored_pod_is_a_clean_copy_bound_to_the_target():
    pod = build_restored_pod(
        SOURCE,
        name="web-abcde",
        target_node="node-b",
        images={"app": "localhost/ckpt/app:1"},
        migration_name="m",
        migration_uid="mu",
        pod_checkpoint_name="m-checkpoint",
        checkpoint_id="cid",
    )
    meta, spec = pod["metadata"], pod["spec"]
    assert set(meta) == {"name", "namespace", "labels", "annotations"}, "no uid, resourceVersion, ownerReferences"
    assert meta["labels"] == {"app": "web", c.LABEL_RESTORED: "true", c.LABEL_MIGRATION: "m"}
    assert "kubectl.kubernetes.io/last-applied-configuration" not in meta["annotations"]
    assert meta["annotations"]["team"] == "a"
    assert meta["annotations"][c.ANNOTATION_SOURCE_POD] == "ns/web"
    assert meta["annotations"][c.ANNOTATION_SOURCE_NODE] == "node-a"
    assert meta["annotations"][c.ANNOTATION_CHECKPOINT_ID] == "cid"
    assert spec["nodeName"] == "node-b"
    assert spec["nodeSelector"] == {"disk": "ssd"}
    assert spec["affinity"] == {"podAntiAffinity": {"y": 2}}
    assert "ephemeralContainers" not in spec
    assert spec["containers"] == [{"name": "app", "image": "localhost/ckpt/app:1", "imagePullPolicy": "Never"}]
    assert "status" not in pod
    assert SOURCE["spec"]["nodeName"] == "node-a", "the source manifest is not modified"


@given(st.from_regex(r"\A[a-z0-9]([-a-z0-9]{0,250}[a-z0-9])?\Z"), st.uuids())
def test_restored_pod_name_is_deterministic_and_a_valid_label(pod, uid):
    name = restored_pod_name(pod, str(uid))
    assert name == restored_pod_name(pod, str(uid))
    assert is_dns1123_label(name)


@given(st.lists(st.uuids(), min_size=1, max_size=8))
def test_a_pod_moved_any_number_of_times_keeps_a_name_of_the_same_length(uids):
    """Each replacement is `<original>-<5 hex>`: the name never grows (it used to gain a suffix per move)."""
    pod = {**SOURCE, "metadata": {**SOURCE["metadata"], "name": "analytics-counter"}}
    for uid in uids:
        name = restored_pod_name(original_name(pod), str(uid))
        pod = build_restored_pod(
            pod,
            name=name,
            target_node="node-b",
            images=None,
            migration_name="m",
            migration_uid=str(uid),
            pod_checkpoint_name="m-checkpoint",
            checkpoint_id="cid",
        )
        assert pod["metadata"]["annotations"][c.ANNOTATION_ORIGINAL_NAME] == "analytics-counter"
        assert len(name) == len("analytics-counter-12345") and name.startswith("analytics-counter-")


def test_an_original_name_annotation_that_is_not_a_valid_name_is_ignored():
    pod = {"metadata": {"name": "web-1a2b3", "annotations": {c.ANNOTATION_ORIGINAL_NAME: "Not A Name!"}}}
    assert original_name(pod) == "web-1a2b3"
