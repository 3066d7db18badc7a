"""Benchmark: N PodMigrations created at once against a real kube-apiserver + etcd.

    ./pants run tests/bench/controller/bench_controller.py [-- --migrations 200 --agent-delay 0.5 --workers 32]

Starts etcd + kube-apiserver (as the integration tests do), two Ready nodes with a gRPC agent double each
(every rpc answers after --agent-delay seconds), N Running pods on node-a, a stand-in kubelet that marks
restored pods Running, and the real controller process. Then creates N PodMigrations to node-b at once and
reports: seconds until all are terminal (and how many Completed), API writes per migration (from the API
server's own apiserver_request_total, minus the benchmark's own writes; and the controller's count of its
explicit writes), and the controller's peak RSS (VmHWM). Measures, asserts nothing.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import statistics
import tempfile
import time
import urllib.request
import warnings
from pathlib import Path

import urllib3
from integration.controller import apiserver, harness
from kubernetes import config

warnings.filterwarnings("ignore")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--migrations", type=int, default=200)
    ap.add_argument("--agent-delay", type=float, default=0.5)
    ap.add_argument("--workers", type=int, default=32)
    ap.add_argument("--timeout", type=float, default=900)
    args = ap.parse_args()
    urllib3.disable_warnings()

    work = Path(tempfile.mkdtemp(prefix="lpm-bench-controller-"))
    plane = apiserver.start(work)
    ctl = None
    kubelet = None
    try:
        api = config.new_client_from_config(config_file=str(plane.kubeconfig))
        api.configuration.connection_pool_maxsize = 32
        apiserver.install_crds(api)
        harness.make_node(api, "node-a")
        harness.make_node(api, "node-b")
        doubles = harness.register_agents(api, ["node-a", "node-b"], delay=args.agent_delay)
        ns = "bench"
        harness.ensure_namespace(api, ns)
        names = [f"app-{i:04d}" for i in range(args.migrations)]
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda n: harness.make_pod(api, ns, n, "node-a"), names))
        kubelet = harness.FakeKubelet(api, interval=0.5).start()
        metrics_port = apiserver.free_port()
        ctl = harness.ControllerProcess(
            plane.kubeconfig,
            work / "controller.log",
            extra=(f"--workers={args.workers}", f"--metrics-port={metrics_port}", "--resync-seconds=2"),
        ).start()
        time.sleep(3)  # let the controller list and watch
        writes_before = plane.write_count()
        t0 = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda n: harness.create_migration(api, ns, f"mig-{n}", n, "node-b"), names))
        created_s = time.monotonic() - t0
        phases: dict[str, int] = {}
        while time.monotonic() - t0 < args.timeout:
            items = harness.custom(api).list_namespaced_custom_object("lpm.my.domain", "v1", ns, "podmigrations")[
                "items"
            ]
            phases = {}
            for item in items:
                phase = (item.get("status") or {}).get("phase", "Pending")
                phases[phase] = phases.get(phase, 0) + 1
            if phases.get("Completed", 0) + phases.get("Failed", 0) == args.migrations:
                break
            time.sleep(1)
        elapsed = time.monotonic() - t0
        time.sleep(2)  # trailing events
        writes_total = plane.write_count() - writes_before
        own = args.migrations + kubelet.writes  # the benchmark's PodMigration creates + stand-in kubelet patches
        ctl_metrics = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
        explicit = sum(
            float(line.rsplit(" ", 1)[1])
            for line in ctl_metrics.splitlines()
            if line.startswith("lpm_controller_api_writes_total{")
        )
        durations = [
            (item.get("status") or {}).get("phaseDurationsSeconds", {})
            for item in harness.custom(api).list_namespaced_custom_object("lpm.my.domain", "v1", ns, "podmigrations")[
                "items"
            ]
        ]
        total_per = [sum(d.values()) for d in durations if d]
        result = {
            "migrations": args.migrations,
            "agent_delay_s": args.agent_delay,
            "workers": args.workers,
            "create_all_s": round(created_s, 2),
            "time_to_all_terminal_s": round(elapsed, 2),
            "phases": phases,
            "per_migration_total_phase_seconds_median": round(statistics.median(total_per), 2) if total_per else None,
            "api_writes_per_migration_apiserver": round((writes_total - own) / args.migrations, 2),
            "api_writes_per_migration_controller_explicit": round(explicit / args.migrations, 2),
            "controller_peak_rss_mib": round(ctl.peak_rss_kib() / 1024, 1),
            "agent_calls": {node: len(d.calls) for node, d in doubles.items()},
        }
        print(json.dumps(result, indent=2))
    finally:
        if ctl:
            ctl.stop()
        if kubelet:
            kubelet.stop()
        plane.stop()


if __name__ == "__main__":
    main()
