"""Session fixtures: one real control plane (etcd + kube-apiserver) with LPM's CRDs, agent doubles on three
nodes, a stand-in kubelet, and the real controller process."""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from pathlib import Path

import pytest
import urllib3
from integration.controller import apiserver, harness
from kubernetes import config

warnings.filterwarnings("ignore", category=urllib3.exceptions.InsecureRequestWarning)
NODES = ["node-a", "node-b", "node-c"]


@pytest.fixture(scope="session")
def control_plane():
    work = Path(tempfile.mkdtemp(prefix="lpm-controller-it-"))
    plane = apiserver.start(work)
    yield plane
    plane.stop()
    keep = os.environ.get("LPM_KEEP_LOGS")
    if keep:
        apiserver.keep_logs(plane, Path(keep))
    shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="session")
def api(control_plane):
    client = config.new_client_from_config(config_file=str(control_plane.kubeconfig))
    apiserver.install_crds(client)
    for node in NODES:
        harness.make_node(client, node)
    harness.make_node(client, "node-down", ready=False)
    harness.make_node(client, "node-cordoned", unschedulable=True)
    return client


@pytest.fixture(scope="session")
def agents(api):
    doubles = harness.register_agents(api, NODES)
    yield doubles
    for double in doubles.values():
        double.server.stop(0)


@pytest.fixture(scope="session")
def kubelet(api):
    fake = harness.FakeKubelet(api).start()
    yield fake
    fake.stop()


@pytest.fixture(scope="session")
def controller(control_plane, api, agents, kubelet):
    proc = harness.ControllerProcess(control_plane.kubeconfig, control_plane.workdir / "controller.log").start()
    yield proc
    proc.stop()
    log = control_plane.workdir / "controller.log"
    if log.exists():
        print(log.read_text(errors="replace")[-5000:])


@pytest.fixture
def ns(api, agents):
    name = harness.unique("t")
    harness.ensure_namespace(api, name)
    for double in agents.values():
        double.reset()
    return name
