"""The kubelet client against a scripted HTTP server: what is retried, what is not, the schedule, the deadline."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from urllib3.exceptions import ProtocolError

from lpm.agent.kubelet import (
    Backoff,
    KubeletClient,
    KubeletCriuFailed,
    KubeletForbidden,
    KubeletNotFound,
    KubeletRejected,
    KubeletUnavailable,
    _DeadlineRetry,
)

FAST = Backoff(retries=5, initial=0.01, factor=2.0)


class Script:
    def __init__(self) -> None:
        self.answers: list[tuple[int, str, dict[str, str]]] = []
        self.requests: list[str] = []


@pytest.fixture
def kubelet() -> Iterator[tuple[Script, str]]:
    script = Script()

    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self) -> None:
            script.requests.append(f"{self.command} {self.path}")
            status, body, headers = script.answers.pop(0) if script.answers else (200, '{"items":[]}', {})
            data = body.encode()
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_POST = do_GET = _answer

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield script, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def client(url: str, backoff: Backoff = FAST, checkpoint_dir: str = "/agent/view") -> KubeletClient:
    return KubeletClient(
        url, client_cert=None, client_key=None, ca=None, checkpoint_dir=checkpoint_dir, backoff=backoff
    )


OK = json.dumps({"items": ["/var/lib/kubelet/checkpoints/checkpoint-web_default-app-2026.tar"]})


def test_default_schedule_is_the_seeds_five_steps_from_two_seconds_doubling() -> None:
    assert Backoff().delays() == [2.0, 4.0, 8.0, 16.0, 32.0]
    retry = client("http://127.0.0.1:1", backoff=Backoff())._retry(deadline=time.monotonic() + 1000)
    assert retry.total == 5 and "POST" in (retry.allowed_methods or ()) and 500 in (retry.status_forcelist or ())
    waits = []
    for _ in range(5):
        retry = retry.increment(method="POST", url="/checkpoint/x", error=ProtocolError("connection reset"))
        waits.append(retry.get_backoff_time())
    assert waits == [2.0, 4.0, 8.0, 16.0, 32.0]


def test_success_returns_the_node_path_mapped_into_the_agents_mount(kubelet: tuple[Script, str]) -> None:
    script, url = kubelet
    script.answers.append((200, OK, {}))
    result = client(url).checkpoint("default", "web", "app", timeout=30)
    assert result.node_path == "/var/lib/kubelet/checkpoints/checkpoint-web_default-app-2026.tar"
    assert result.local_path == Path("/agent/view/checkpoint-web_default-app-2026.tar")
    assert result.attempts == 1
    assert script.requests == ["POST /checkpoint/default/web/app?timeout=30"]


def test_500_then_success_is_retried(kubelet: tuple[Script, str]) -> None:
    script, url = kubelet
    script.answers += [(500, "transient", {}), (502, "proxy", {}), (200, OK, {})]
    assert client(url).checkpoint("default", "web", "app", timeout=30).attempts == 3
    assert len(script.requests) == 3


@pytest.mark.parametrize(
    ("status", "error"),
    [(404, KubeletNotFound), (401, KubeletForbidden), (403, KubeletForbidden), (400, KubeletRejected)],
)
def test_4xx_is_never_retried(kubelet: tuple[Script, str], status: int, error: type[Exception]) -> None:
    script, url = kubelet
    script.answers.append((status, "nope", {}))
    with pytest.raises(error, match=str(status)):
        client(url).checkpoint("default", "web", "app", timeout=30)
    assert len(script.requests) == 1


def test_5xx_beyond_the_retries_is_unavailable_with_the_kubelets_message(kubelet: tuple[Script, str]) -> None:
    script, url = kubelet
    script.answers += [(500, "CRI error: checkpoint failed", {})] * 6
    with pytest.raises(KubeletUnavailable, match="CRI error") as err:
        client(url).checkpoint("default", "web", "app", timeout=30)
    assert len(script.requests) == 6 and err.value.attempts == 6


def test_connection_refused_is_retried_then_unavailable() -> None:
    with pytest.raises(KubeletUnavailable, match="unreachable"):
        client("http://127.0.0.1:1").checkpoint("default", "web", "app", timeout=30)


def test_the_overall_deadline_cuts_the_retries_short(kubelet: tuple[Script, str]) -> None:
    script, url = kubelet
    script.answers += [(503, "busy", {})] * 6
    slow = Backoff(retries=5, initial=5.0, factor=2.0)  # 155 s of waits, far beyond the deadline
    with pytest.raises(KubeletUnavailable):
        client(url, backoff=slow).checkpoint("default", "web", "app", timeout=0.5)
    assert len(script.requests) < 6


def test_retry_after_is_honoured_but_capped_by_the_deadline() -> None:
    retry = _DeadlineRetry(total=5, schedule=FAST, deadline=time.monotonic() + 3.0)

    class Response:
        headers = {"Retry-After": "120"}

        def getheader(self, name: str) -> str | None:
            return self.headers.get(name)

    after = retry.get_retry_after(Response())
    assert after is not None and 0 < after <= 3.0


@pytest.mark.parametrize(
    "path",
    [
        "/etc/shadow",
        "/var/lib/kubelet/checkpoints/../../../etc/shadow",
        "/var/lib/kubelet/checkpoints/a/b.tar",
        "/var/lib/kubelet/checkpoints",
        "relative.tar",
    ],
)
def test_paths_outside_the_kubelet_checkpoint_directory_are_refused(path: str) -> None:
    with pytest.raises(KubeletRejected):
        client("http://127.0.0.1:1").node_path(path)


def test_a_malformed_answer_is_rejected(kubelet: tuple[Script, str]) -> None:
    script, url = kubelet
    script.answers.append((200, "{}", {}))
    with pytest.raises(KubeletRejected, match="items"):
        client(url).checkpoint("default", "web", "app", timeout=30)


CRIU_500 = (
    'checkpointing container "4a1f" failed: criu failed: type NOTIFY errno 0 path= '
    "/run/containerd/io.containerd.runtime.v2.task/k8s.io/4a1f/criu-dump.log"
)


def test_a_criu_failure_is_not_retried_and_is_reported_as_such(kubelet: tuple[Script, str]) -> None:
    script, url = kubelet
    script.answers = [(500, CRIU_500, {}), (200, OK, {})]
    with pytest.raises(KubeletCriuFailed) as err:
        client(url).checkpoint("default", "web", "app", timeout=10)
    assert len(script.requests) == 1, "a CRIU refusal is not a transport failure: no retry"
    assert "criu failed" in str(err.value) and err.value.status == 500


def test_a_plain_500_is_still_retried_as_a_transient_kubelet_failure(kubelet: tuple[Script, str]) -> None:
    script, url = kubelet
    script.answers = [(500, "internal error", {}), (500, "internal error", {}), (200, OK, {})]
    result = client(url).checkpoint("default", "web", "app", timeout=10)
    assert result.attempts == 3 and len(script.requests) == 3
