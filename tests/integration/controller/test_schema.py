"""The CRDs from deploy/kustomize/base/crds install on a real API server, which then rejects invalid specs
(OpenAPI schema and CEL rules) with messages that name the field."""

from __future__ import annotations

import json

import pytest
from integration.controller import harness
from kubernetes import client


def _create(api, ns, body, plural="podmigrations"):
    return harness.custom(api).create_namespaced_custom_object("lpm.my.domain", "v1", ns, plural, body)


def _rejection(api, ns, body, plural="podmigrations") -> str:
    with pytest.raises(client.exceptions.ApiException) as err:
        _create(api, ns, body, plural)
    assert err.value.status == 422, err.value.body
    return str(json.loads(err.value.body)["message"])


def test_all_five_crds_are_established(api):
    ext = client.ApiextensionsV1Api(api)
    names = {c.metadata.name for c in ext.list_custom_resource_definition().items}
    assert {
        "podmigrations.lpm.my.domain",
        "podcheckpoints.lpm.my.domain",
        "containercheckpoints.lpm.my.domain",
        "podcheckpointcontents.lpm.my.domain",
        "containercheckpointcontents.lpm.my.domain",
    } <= names


@pytest.mark.parametrize(
    ("spec", "field", "words"),
    [
        ({"podName": "Bad_Name", "targetNode": "node-b"}, "spec.podName", "should match"),
        ({"podName": "web"}, "spec.targetNode", "Required value"),
        (
            {"podName": "web", "targetNode": "node-b", "timeoutSeconds": 5},
            "spec.timeoutSeconds",
            "greater than or equal to 30",
        ),
        (
            {"podName": "web", "targetNode": "node-b", "sourcePolicy": "Teleport"},
            "spec.sourcePolicy",
            "Unsupported value",
        ),
        (
            {"podName": "web", "targetNode": "node-b", "sourceCleanup": "Maybe"},
            "spec.sourceCleanup",
            "Unsupported value",
        ),
    ],
)
def test_invalid_podmigration_spec_is_rejected_naming_the_field(api, ns, spec, field, words):
    message = _rejection(
        api, ns, {"apiVersion": "lpm.my.domain/v1", "kind": "PodMigration", "metadata": {"name": "bad"}, "spec": spec}
    )
    assert field in message and words in message, message


def test_podmigration_target_is_immutable_by_cel_rule(api, ns):
    _create(api, ns, harness.migration("imm", "nosuchpod", "node-b"))
    with pytest.raises(client.exceptions.ApiException) as err:
        harness.custom(api).patch_namespaced_custom_object(
            "lpm.my.domain", "v1", ns, "podmigrations", "imm", {"spec": {"targetNode": "node-c"}}
        )
    assert err.value.status == 422
    assert "spec.targetNode" in err.value.body and "is immutable" in err.value.body


def test_container_checkpoint_content_rejects_a_traversal_artifact_uri(api):
    body = {
        "apiVersion": "lpm.my.domain/v1",
        "kind": "ContainerCheckpointContent",
        "metadata": {"name": "evil"},
        "spec": {
            "containerCheckpointRef": {"name": "x", "namespace": "y"},
            "artifactURI": "shared://../../etc/passwd/dump.tar.zst",
            "containerName": "app",
            "podUID": "00000000-0000-0000-0000-000000000000",
            "checkpointID": "c1",
            "nodeName": "node-a",
        },
    }
    with pytest.raises(client.exceptions.ApiException) as err:
        harness.custom(api).create_cluster_custom_object("lpm.my.domain", "v1", "containercheckpointcontents", body)
    assert err.value.status == 422 and "spec.artifactURI" in err.value.body


def test_kubectl_get_columns_show_pod_target_and_phase(api, ns):
    _create(api, ns, harness.migration("cols", "nosuchpod", "node-b"))
    resp = api.call_api(
        f"/apis/lpm.my.domain/v1/namespaces/{ns}/podmigrations",
        "GET",
        header_params={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"},
        response_type="object",
        auth_settings=["BearerToken"],
        _return_http_data_only=True,
    )
    columns = [c["name"] for c in resp["columnDefinitions"]]
    assert columns[:5] == ["Name", "Pod", "Source", "Target", "Phase"], columns
