"""CRIU's own words: the first real error lines of a failed dump's log, without node paths, with a hint."""

from __future__ import annotations

from pathlib import Path

from lpm.agent import criu_log
from lpm.api.messages import scrub_paths

# The shape of containerd's criu-dump.log for a pod with a loopback TCP client (CRIU 4.2.1, measured here).
DUMP_LOG = """\
(00.000000) Version: 4.2.1 (gitid 0)
(00.000420) Error (criu/rlimit.c:60): rlimit: Can't setup RLIMIT_NOFILE for self: Operation not permitted
(00.013977) Dumping path for 3 fd via self 11 [/run/containerd/io.containerd.runtime.v2.task/k8s.io/abc/rootfs]
(00.021054) Error (criu/sk-inet.c:200): inet: Connected TCP socket, consider using --tcp-established option.
(00.021101) Error (criu/cr-dump.c:1768): Dump files (pid: 38) failed with -1
(00.022001) Error (criu/cr-dump.c:2180): Dumping FAILED.
"""
KUBELET_500 = (
    "checkpointing of default/redis/redis failed (rpc error: code = Unknown desc = checkpointing container "
    '"4a1f" failed: criu failed: type NOTIFY errno 0 path= '
    "/run/containerd/io.containerd.runtime.v2.task/k8s.io/4a1f/criu-dump.log)"
)


def test_the_first_real_error_lines_come_out_in_order_without_noise_or_timestamps() -> None:
    lines = criu_log.error_lines(DUMP_LOG)
    assert lines == (
        "inet: Connected TCP socket, consider using --tcp-established option",
        "Dump files (pid: 38) failed with -1",
        "Dumping FAILED",
    )


def test_paths_in_error_lines_are_reduced_to_their_last_component() -> None:
    text = "(00.1) Error (criu/files-reg.c:2000): Can't open file /var/lib/kubelet/pods/x/volumes/data/log.txt"
    assert criu_log.error_lines(text) == ("Can't open file log.txt",)
    assert scrub_paths("see /run/containerd/a/b/restore.log now") == "see restore.log now"
    assert (
        scrub_paths("kubelet https://10.0.0.1:10250/checkpoint/ns/pod")
        == "kubelet https://10.0.0.1:10250/checkpoint/ns/pod"
    )


def test_the_log_path_is_read_from_the_runtime_message_and_only_inside_the_task_directory(tmp_path: Path) -> None:
    node_dir = "/run/containerd/io.containerd.runtime.v2.task"
    assert criu_log.log_path_in(KUBELET_500) == f"{node_dir}/k8s.io/4a1f/criu-dump.log"
    assert criu_log.local_path(f"{node_dir}/k8s.io/4a1f/criu-dump.log", node_dir, tmp_path) == (
        tmp_path / "k8s.io/4a1f/criu-dump.log"
    )
    for outside in ("/etc/shadow", f"{node_dir}/../../../etc/shadow", f"{node_dir}-evil/x.log"):
        assert criu_log.local_path(outside, node_dir, tmp_path) is None


def test_a_refused_tcp_dump_is_explained_with_criu_words_and_the_tcp_established_hint(tmp_path: Path) -> None:
    log = tmp_path / "k8s.io" / "4a1f" / "criu-dump.log"
    log.parent.mkdir(parents=True)
    log.write_text(DUMP_LOG)
    failure = criu_log.read_failure(KUBELET_500, "/run/containerd/io.containerd.runtime.v2.task", tmp_path)
    assert failure.cause == "TCPConnectionOpen" and failure.certain
    summary = failure.summary()
    assert "Connected TCP socket" in summary and "spec.options.tcpEstablished" in summary
    assert "/run/containerd" not in summary and "criu-dump.log" not in summary


def test_a_log_that_is_gone_still_gives_a_clear_message_without_paths(tmp_path: Path) -> None:
    failure = criu_log.read_failure(KUBELET_500, "/run/containerd/io.containerd.runtime.v2.task", tmp_path)
    assert failure.lines == () and not failure.certain
    assert "CRIU left no readable log" in failure.summary()
    assert "/run/" not in failure.summary()


def test_an_unknown_failure_gets_no_made_up_hint() -> None:
    failure = criu_log.explain(("Unable to seize 12: Operation not permitted",))
    assert failure.cause == "" and failure.advice == "" and not failure.certain


def test_a_listener_with_unaccepted_connections_is_a_certain_refusal_with_its_own_hint() -> None:
    log = (
        "(00.030101) Error (criu/sk-inet.c:185): inet: In-flight connection (l) for 1c2d\n"
        "(00.030150) Error (criu/sk-inet.c:186): inet: In-flight connections can be ignored with the "
        "--skip-in-flight option.\n"
        "(00.031000) Error (criu/cr-dump.c:2180): Dumping FAILED.\n"
    )
    failure = criu_log.explain(criu_log.error_lines(log), "criu failed: type NOTIFY errno 0")
    assert failure.cause == "ConnectionNotAccepted" and failure.certain
    assert "In-flight connection (l)" in failure.summary() and "not accepted" in failure.summary()


def test_a_file_criu_cannot_dump_names_the_file_kind_and_is_a_certain_refusal() -> None:
    log = (
        "(00.041000) Error (criu/files-ext.c:94): Can't dump file 3 of that type [600] "
        "(anon anon_inode:[perf_event])\n"
        "(00.041100) Error (criu/cr-dump.c:1545): Dump files (pid: 21338) failed with -1\n"
    )
    failure = criu_log.explain(criu_log.error_lines(log))
    assert failure.cause == "UnsupportedFile" and failure.certain
    assert "anon_inode:[perf_event]" in failure.summary() and "profil" in failure.summary()
