"""What every install of LPM must look like, checked on the rendered overlays (kubectl kustomize)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from unit.deploy.manifests import NAMESPACE, OVERLAYS, of_kind, one, render, repo_root

from lpm.agent import config as agent_config
from lpm.api import constants
from lpm.controller import config as controller_config
from lpm.storage.nfs import NfsLocation

ALL = (*OVERLAYS, "deploy")

# Host paths the agent may write, and why. Anything else it mounts from the host must be read-only.
AGENT_WRITABLE_HOST_PATHS = {
    "/var/lib/kubelet/checkpoints": "removes the kubelet's archives once they are in the repository",
    "/sys/fs/cgroup": "freezes and thaws source containers through their freezer cgroup",
    "/run/containerd/containerd.sock": "loads checkpoint images into the node's containerd",
    "/var/lib/lpm-agent": "keeps freeze records (auto-thaw deadlines) across agent restarts",
    "/var/lib/lpm/restore": "stages checkpoints for lpm-runc, the live engine's runtime wrapper (RuntimeClass lpm)",
    "/var/lib/lpm/dump": "the live engine's runtime dumps: containerd writes CRIU's images there for the agent",
    "/var/lib/lpm/tls": "post-copy: the agent's TLS files, copied there (root-only) for CRIU's page stream",
    "/run/lpm": "the live engine's dumps and staged checkpoints when they fit in memory (tmpfs)",
}
# Read, never written: the kubelet client key, the node's procfs (eligibility), the runtime's task dirs (CRIU
# logs), containerd's overlay snapshots (a frozen source's file-system changes).
AGENT_READ_ONLY_HOST_PATHS = {
    "/etc/kubernetes/pki",
    "/proc",
    "/run/containerd/io.containerd.runtime.v2.task",
    "/var/lib/containerd/io.containerd.runtime.v2.task",
    "/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs",
}
RBAC_VERBS_NEVER = {"*", "escalate", "bind", "impersonate"}


def _pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    return obj["spec"]["template"]["spec"]


def _container(obj: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in _pod_spec(obj)["containers"] if c["name"] == name)


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


@pytest.mark.parametrize("name", ALL)
def test_every_kustomization_renders_with_kubectl(name: str) -> None:
    kinds = {o["kind"] for o in render(name)}
    assert {"Namespace", "CustomResourceDefinition", "Deployment", "DaemonSet", "PersistentVolumeClaim"} <= kinds


def test_deploy_kustomization_is_the_nfs_overlay() -> None:
    assert render("deploy") == render("nfs")


@pytest.mark.parametrize("name", ALL)
def test_runtime_class_lpm_selects_the_lpm_handler(name: str) -> None:
    # The nodes' containerd maps handler lpm to the runc shim with lpm-runc (infra/local/cluster).
    rc = one(render(name), "RuntimeClass", "lpm")
    assert rc["apiVersion"] == "node.k8s.io/v1" and rc["handler"] == "lpm"


@pytest.mark.parametrize("name", ALL)
def test_everything_namespaced_lives_in_lpm_system(name: str) -> None:
    cluster_scoped = {"Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"}
    cluster_scoped |= {"StorageClass", "PersistentVolume", "RuntimeClass"}
    cluster_scoped |= {"MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"}
    for o in render(name):
        if o["kind"] not in cluster_scoped:
            assert o["metadata"].get("namespace") == NAMESPACE, f"{o['kind']}/{o['metadata']['name']}"


@pytest.mark.parametrize("name", ALL)
def test_rbac_has_no_wildcards_and_no_privilege_escalation_verbs(name: str) -> None:
    objs = render(name)
    roles = [*of_kind(objs, "Role"), *of_kind(objs, "ClusterRole")]
    assert roles
    for role in roles:
        for rule in role["rules"]:
            where = f"{role['kind']}/{role['metadata']['name']} {rule}"
            assert "*" not in rule.get("apiGroups", []), where
            assert not any("*" in r for r in rule.get("resources", [])), where
            assert not RBAC_VERBS_NEVER & set(rule["verbs"]), where
            assert "nonResourceURLs" not in rule, where
            assert not rule.get("resourceNames") or "*" not in rule["resourceNames"], where


@pytest.mark.parametrize("name", ALL)
def test_controller_may_touch_only_lpm_kinds_pods_nodes_events_crd_listing_namespaces_and_its_webhooks(
    name: str,
) -> None:
    role = one(render(name), "ClusterRole", "lpm-controller")
    allowed_groups = {constants.GROUP, "", "apiextensions.k8s.io", "policy"}
    granted: dict[str, set[str]] = {}
    webhook_configs = {}
    for rule in role["rules"]:
        if rule["apiGroups"] == ["admissionregistration.k8s.io"]:
            # Only its own two webhook configurations, by name, to write their caBundle.
            assert rule["verbs"] == ["get", "patch"], rule
            (res,) = rule["resources"]
            webhook_configs[res] = rule["resourceNames"]
            continue
        assert set(rule["apiGroups"]) <= allowed_groups, rule
        for res in rule["resources"]:
            granted.setdefault(res, set()).update(rule["verbs"])
    lpm_kinds = {
        constants.PLURAL_POD_MIGRATIONS,
        constants.PLURAL_POD_CHECKPOINTS,
        constants.PLURAL_CONTAINER_CHECKPOINTS,
        constants.PLURAL_POD_CHECKPOINT_CONTENTS,
        constants.PLURAL_CONTAINER_CHECKPOINT_CONTENTS,
    }
    base = {r.split("/")[0] for r in granted}
    assert base == lpm_kinds | {
        "pods",
        "nodes",
        "events",
        "customresourcedefinitions",
        "namespaces",
        "poddisruptionbudgets",
    }
    assert granted["poddisruptionbudgets"] == {"list"}  # the eviction webhook respects budgets
    assert webhook_configs == {
        "mutatingwebhookconfigurations": ["lpm-replacement"],
        "validatingwebhookconfigurations": ["lpm-eviction"],
    }
    assert granted["nodes"] == {"get", "list", "watch"}
    assert granted["namespaces"] == {"get"}  # checkpoint retention reads a namespace's annotation
    assert granted["customresourcedefinitions"] == {"list", "watch"}
    assert granted["events"] == {"create"}
    # patch: an owned source's selector label (released from its owner, given back on rollback); never update.
    assert "update" not in granted["pods"] and "patch" in granted["pods"]
    for kind in lpm_kinds:
        assert {"get", "list", "watch"} <= granted[kind], kind
        assert {"update", "patch"} & granted[f"{kind}/status"], kind
    # Nothing reads Secrets or ConfigMaps through the API.
    assert "secrets" not in granted and "configmaps" not in granted


@pytest.mark.parametrize("name", ALL)
def test_agent_has_no_api_access(name: str) -> None:
    objs = render(name)
    bound = [
        b
        for b in (*of_kind(objs, "RoleBinding"), *of_kind(objs, "ClusterRoleBinding"))
        if any(s.get("name") == "lpm-agent" for s in b["subjects"])
    ]
    assert bound == []
    ds = one(objs, "DaemonSet", "lpm-agent")
    assert _pod_spec(ds)["automountServiceAccountToken"] is False
    assert one(objs, "ServiceAccount", "lpm-agent")["automountServiceAccountToken"] is False


@pytest.mark.parametrize("name", ALL)
def test_agent_mounts_nothing_writable_from_the_host_beyond_the_allow_list(name: str) -> None:
    ds = one(render(name), "DaemonSet", "lpm-agent")
    spec = _pod_spec(ds)
    host_paths = {v["name"]: v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v}
    mounted: set[str] = set()
    for c in [*spec.get("initContainers", []), *spec["containers"]]:
        for m in c.get("volumeMounts", []):
            path = host_paths.get(m["name"])
            if path is None:
                continue
            mounted.add(path)
            if not m.get("readOnly", False):
                assert path in AGENT_WRITABLE_HOST_PATHS, f"{c['name']} mounts host {path} writable"
            if path in AGENT_READ_ONLY_HOST_PATHS:
                assert m.get("readOnly") is True, f"{path} must be mounted read-only"
            assert m.get("mountPropagation", "None") == "None", f"{path} propagates mounts"
    assert AGENT_READ_ONLY_HOST_PATHS | {"/var/lib/kubelet/checkpoints", "/sys/fs/cgroup"} <= mounted


@pytest.mark.parametrize("name", ALL)
def test_agent_runs_without_privileges_or_host_pid(name: str) -> None:
    ds = one(render(name), "DaemonSet", "lpm-agent")
    spec = _pod_spec(ds)
    assert not spec.get("hostPID") and not spec.get("hostIPC")
    agent = _container(ds, "agent")
    sc = agent["securityContext"]
    assert sc.get("privileged") is not True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    # SYS_PTRACE: reading /proc/<pid>/{fd,mountinfo} of a source's processes; DAC_READ_SEARCH: reading a frozen
    # source's changed files for the runtime dump. Both read-only; see the manifest's comment.
    assert sc["capabilities"] == {"drop": ["ALL"], "add": ["SYS_PTRACE", "DAC_READ_SEARCH"]}
    assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert {"operator": "Exists"} in spec["tolerations"]


@pytest.mark.parametrize("name", ALL)
def test_agent_serves_grpc_on_its_port_with_mtls_from_a_secret(name: str) -> None:
    objs = render(name)
    ds = one(objs, "DaemonSet", "lpm-agent")
    assert ds["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"] == "lpm-agent"
    key, value = constants.AGENT_LABEL_SELECTOR.split("=")
    assert ds["spec"]["template"]["metadata"]["labels"][key] == value
    agent = _container(ds, "agent")
    ports = {p["name"]: p["containerPort"] for p in agent["ports"]}
    assert ports == {"grpc": constants.AGENT_PORT, "metrics": int(_env(agent)["LPM_AGENT_METRICS_PORT"])}
    assert agent["readinessProbe"] and agent["livenessProbe"]
    env = _env(agent)
    secrets = {v["name"]: v["secret"]["secretName"] for v in _pod_spec(ds)["volumes"] if "secret" in v}
    tls_dir = next(m["mountPath"] for m in agent["volumeMounts"] if secrets.get(m["name"]) == "lpm-agent-tls")
    for var in ("LPM_AGENT_TLS_CERT", "LPM_AGENT_TLS_KEY", "LPM_AGENT_TLS_CLIENT_CA"):
        assert env[var].startswith(tls_dir + "/"), var
    assert "LPM_AGENT_INSECURE" not in env
    if env["LPM_STORAGE"].startswith("nfs://"):
        NfsLocation.parse(env["LPM_STORAGE"])  # spoken by the agent itself (the local cluster's kernel)
    else:
        repo = next(m for m in agent["volumeMounts"] if m["mountPath"] == env["LPM_STORAGE"])
        claim = next(v for v in _pod_spec(ds)["volumes"] if v["name"] == repo["name"])
        assert claim["persistentVolumeClaim"]["claimName"] == "checkpoint-repo"


@pytest.mark.parametrize("name", ALL)
def test_controller_is_one_locked_down_replica_with_probes_and_metrics(name: str) -> None:
    objs = render(name)
    dep = one(objs, "Deployment", "lpm-controller")
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"]["type"] == "Recreate"
    spec = _pod_spec(dep)
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    c = _container(dep, "controller")
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    env = _env(c)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {
        "metrics": int(env["LPM_METRICS_PORT"]),
        "health": int(env["LPM_HEALTH_PORT"]),
        "webhook": int(env["LPM_WEBHOOK_PORT"]),
    }
    for probe in (c["livenessProbe"], c["readinessProbe"]):
        assert probe["httpGet"]["port"] == "health"
    assert env["LPM_STANDALONE"] == "true"  # one replica: see the comment in base/controller/deployment.yaml
    assert "LPM_INSECURE_AGENTS" not in env
    assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]


@pytest.mark.parametrize("name", ALL)
def test_checkpoint_repo_is_a_20gi_rwx_claim(name: str) -> None:
    pvc = one(render(name), "PersistentVolumeClaim", "checkpoint-repo")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert pvc["spec"]["resources"]["requests"]["storage"] == "20Gi"


@pytest.mark.parametrize("name", ("nfs", "vagrant"))
def test_nfs_overlays_provision_nfs_rwx_with_the_upstream_provisioner(name: str) -> None:
    objs = render(name)
    assert one(objs, "PersistentVolumeClaim", "checkpoint-repo")["spec"]["storageClassName"] == "nfs-rwx"
    sc = one(objs, "StorageClass", "nfs-rwx")
    dep = one(objs, "Deployment", "nfs-subdir-external-provisioner")
    c = _container(dep, "nfs-subdir-external-provisioner")
    assert c["image"] == "registry.k8s.io/sig-storage/nfs-subdir-external-provisioner:v4.0.2"
    env = _env(c)
    assert env["PROVISIONER_NAME"] == sc["provisioner"]
    nfs = next(v["nfs"] for v in _pod_spec(dep)["volumes"] if v["name"] == "nfs-root")
    cm = one(objs, "ConfigMap", "lpm-nfs")["data"]
    assert (env["NFS_SERVER"], env["NFS_PATH"]) == (nfs["server"], nfs["path"]) == (cm["NFS_SERVER"], cm["NFS_PATH"])


def test_vagrant_overlay_uses_the_masters_nfs_export() -> None:
    cm = one(render("vagrant"), "ConfigMap", "lpm-nfs")["data"]
    assert cm["NFS_SERVER"] == "192.168.56.10"


def test_local_overlay_binds_the_shared_dir_and_never_pulls() -> None:
    objs = render("local")
    pvc = one(objs, "PersistentVolumeClaim", "checkpoint-repo")
    pv = one(objs, "PersistentVolume", pvc["spec"]["volumeName"])
    assert pv["spec"]["claimRef"] == {"namespace": NAMESPACE, "name": "checkpoint-repo"}
    assert pv["spec"]["storageClassName"] == pvc["spec"]["storageClassName"]
    assert pv["spec"]["accessModes"] == ["ReadWriteMany"]
    assert pv["spec"]["hostPath"]["path"] == "/var/lib/lpm-local/shared-checkpoints"
    for kind, name in (("Deployment", "lpm-controller"), ("DaemonSet", "lpm-agent")):
        for c in _pod_spec(one(objs, kind, name))["containers"]:
            assert c["image"].startswith("localhost/lpm/") and c["imagePullPolicy"] == "Never"


def _agent_env(overlay: str) -> dict[str, str]:
    agent = _pod_spec(one(render(overlay), "DaemonSet", "lpm-agent"))["containers"][0]
    return {e["name"]: e.get("value", "") for e in agent["env"]}


def test_local_overlay_stores_on_the_clusters_nfs_server_and_local_hostpath_on_the_shared_dir() -> None:
    location = NfsLocation.parse(_agent_env("local")["LPM_STORAGE"])
    assert (location.host, location.port, location.path) == ("172.31.250.1", 2049, "/export")  # infra/local
    assert dict(location.options)["mountport"] == "20048"
    agent = _pod_spec(one(render("local-hostpath"), "DaemonSet", "lpm-agent"))["containers"][0]
    repo_mount = next(m["mountPath"] for m in agent["volumeMounts"] if m["name"] == "checkpoint-repo")
    assert _agent_env("local-hostpath")["LPM_STORAGE"] == repo_mount
    for overlay in ("nfs", "local", "local-hostpath", "vagrant"):  # sealed at rest everywhere
        assert _agent_env(overlay)["LPM_ENCRYPTION_KEYS"] == "/etc/lpm/checkpoint-keys"


def _known_env(parser: Any) -> set[str]:
    names = {a.env for a in parser._actions if hasattr(a, "env")}
    names |= {m for a in parser._actions for m in re.findall(r"\[env (\w+)", a.help or "")}
    return names


@pytest.mark.parametrize("name", ALL)
def test_every_lpm_variable_the_manifests_set_is_a_flag_of_the_binary(name: str) -> None:
    objs = render(name)
    helpers = {"POD_ID", "HOST_IP"}  # kopf's identity; input to LPM_KUBELET_URL
    for kind, obj_name, container, parser in (
        ("Deployment", "lpm-controller", "controller", controller_config.build_parser()),
        ("DaemonSet", "lpm-agent", "agent", agent_config.build_parser()),
    ):
        unknown = set(_env(_container(one(objs, kind, obj_name), container))) - _known_env(parser) - helpers
        assert not unknown, f"{obj_name} sets variables its binary does not read: {sorted(unknown)}"


def _build_args() -> dict[str, str]:
    text = (repo_root() / "pants.toml").read_text()
    return dict(re.findall(r'"(LPM_[A-Z_]+)=([^"]+)"', text))


@pytest.mark.parametrize("name", ALL)
def test_images_are_the_ones_pants_builds(name: str) -> None:
    version = _build_args()["LPM_VERSION"]
    objs = render(name)
    images = {
        _container(one(objs, "Deployment", "lpm-controller"), "controller")["image"],
        _container(one(objs, "DaemonSet", "lpm-agent"), "agent")["image"],
    }
    assert images == {f"localhost/lpm/controller:{version}", f"localhost/lpm/agent:{version}"}


@pytest.mark.parametrize("recipe,arg", [("python-base", "LPM_PYTHON_BASE"), ("agent-base", "LPM_AGENT_BASE")])
def test_pants_builds_on_the_base_images_the_recipes_name(recipe: str, arg: str) -> None:
    import subprocess

    script = repo_root() / "src" / "docker" / recipe / "build.sh"
    tag = subprocess.run(["bash", str(script), "--tag"], check=True, capture_output=True, text=True).stdout.strip()
    assert _build_args()[arg] == tag, f"update {arg} in pants.toml [docker].build_args (then src/docker/setup-host.sh)"


@pytest.mark.parametrize("name", ALL)
def test_users_get_migrations_through_the_builtin_roles_and_never_checkpoint_storage(name: str) -> None:
    objs = render(name)

    def grants(role: dict[str, Any]) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for rule in role["rules"]:
            for res in rule["resources"]:
                out.setdefault(res, set()).update(rule["verbs"])
        return out

    edit, view = one(objs, "ClusterRole", "lpm-edit"), one(objs, "ClusterRole", "lpm-view")
    labels = edit["metadata"]["labels"]
    assert (
        labels["rbac.authorization.k8s.io/aggregate-to-edit"] == labels["rbac.authorization.k8s.io/aggregate-to-admin"]
    )
    assert labels["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    edits, views = grants(edit), grants(view)
    assert edits[constants.PLURAL_POD_MIGRATIONS] >= {"create", "delete", "get", "list", "watch"}
    # Checkpoints are the controller's to write; their storage (the cluster-scoped contents) is admins' only.
    for kind in (constants.PLURAL_POD_CHECKPOINTS, constants.PLURAL_CONTAINER_CHECKPOINTS):
        assert edits[kind] == views[kind] == {"get", "list", "watch"}
    assert all(verbs <= {"get", "list", "watch"} for verbs in views.values())
    users = (edits, views, grants(one(objs, "ClusterRole", "lpm-node-drainer")))
    for granted in users:
        assert not any("contents" in res or res.endswith("/status") for res in granted)
        assert "secrets" not in granted


@pytest.mark.parametrize("name", ALL)
def test_the_node_action_script_reads_the_agents_freeze_records_where_the_agent_writes_them(name: str) -> None:
    """deploy/node/lpm-criu-action fences a pod the agent froze by finding the agent's freeze record on the node:
    the agent's state directory must be the node's directory of that name, at the same path."""
    ds = one(render(name), "DaemonSet", "lpm-agent")
    spec = _pod_spec(ds)
    agent = _container(ds, "agent")
    state_dir = next(e["value"] for e in agent["env"] if e["name"] == "LPM_AGENT_STATE_DIR")
    mount = next(m for m in agent["volumeMounts"] if m["mountPath"] == state_dir)
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    script = (repo_root() / "deploy" / "node" / "lpm-criu-action").read_text()
    assert f"agent_state=${{LPM_AGENT_STATE_DIR:-{state_dir}}}" in script
    assert volume["hostPath"]["path"] == state_dir
