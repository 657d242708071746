"""The webhook alert channel against a real local HTTP receiver (http.server in a thread):
one that takes messages, is down, is slow, or answers 429 with Retry-After. Alerts go
through the same dispatcher as SNS and SES: dedup, rate window, summary, retry with backoff,
and `submit` never waits for the network."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from pydantic import ValidationError

from agent.config import AlertsConfig, WebhookConfig
from agent.errors import ConfigError
from agent.monitoring.alerts import Alert, AlertKind
from agent.monitoring.channels import WebhookChannel, build_channels, webhook_url
from agent.monitoring.dispatcher import AlertDispatcher
from tests.support.waiting import wait_until


@dataclass
class Behaviour:
    """What the receiver answers next: a list of (status, headers, delay) consumed in order,
    then `then` for every later request."""

    script: list[tuple[int, dict[str, str], float]] = field(default_factory=list)
    then: tuple[int, dict[str, str], float] = (200, {}, 0.0)
    received: list[tuple[float, dict[str, Any]]] = field(default_factory=list)  # (when, body)
    answered: list[int] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next(self) -> tuple[int, dict[str, str], float]:
        with self.lock:
            return self.script.pop(0) if self.script else self.then

    def texts(self) -> list[str]:
        with self.lock:
            return [body["text"] for _, body in self.received]


class Receiver:
    """A chat webhook on 127.0.0.1: start/stop at will on the same port (down = stopped)."""

    def __init__(self) -> None:
        self.behaviour = Behaviour()
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self.server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/T000/B000/secret"

    def start(self) -> Receiver:
        behaviour = self.behaviour

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                status, headers, delay = behaviour.next()
                if delay:
                    time.sleep(delay)  # a slow receiver (the server's thread, not the test's)
                with behaviour.lock:
                    behaviour.answered.append(status)
                    if status == 200:
                        behaviour.received.append((time.monotonic(), body))
                try:
                    self.send_response(status)
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(b"ok" if status == 200 else b"no")
                except OSError:
                    pass  # the client gave up waiting

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    made = Receiver()
    yield made
    made.stop()


def failure(n: int) -> Alert:
    return Alert(AlertKind.BACKUP_FAILED, key=f"k{n}", summary=f"object {n}: AccessDenied", at=n)


def dispatcher_for(url: str, **options: Any) -> AlertDispatcher:
    settings: dict[str, Any] = {"tick_seconds": 0.02, "retry_seconds": 0.1, "window_seconds": 1.0}
    settings.update(options)
    channel = WebhookChannel(url, timeout=settings.pop("timeout", 1.0))
    return AlertDispatcher([channel], context={"host": "backup-1"}, **settings)


def test_an_alert_arrives_as_json_text_slack_and_teams_take(receiver):
    receiver.start()
    dispatcher = dispatcher_for(receiver.url)
    dispatcher.start()
    dispatcher.submit(failure(1))
    wait_until(lambda: receiver.behaviour.texts(), what="the alert")
    dispatcher.stop()
    [text] = receiver.behaviour.texts()
    assert text.startswith("*[backup-agent] ")
    assert "object 1: AccessDenied" in text and "host: backup-1" in text


def test_a_receiver_that_is_down_gets_the_alert_and_the_summary_when_it_is_back(receiver):
    dispatcher = dispatcher_for(receiver.url, window_seconds=0.5)
    dispatcher.start()
    dispatcher.submit(failure(0))
    for n in range(1, 30):  # a storm while the receiver is down: folded into one summary
        dispatcher.submit(failure(n))
    wait_until(lambda: dispatcher.delivery_failures["webhook"] >= 2, what="retries")
    receiver.start()
    wait_until(lambda: len(receiver.behaviour.texts()) >= 2, timeout=15, what="delivery")
    dispatcher.stop()
    texts = receiver.behaviour.texts()
    assert len(texts) == 2, texts
    assert "object 0" in texts[0]
    assert "29 more" in texts[1]


def test_a_slow_receiver_never_holds_up_the_caller(receiver):
    receiver.behaviour.script = [(200, {}, 3.0)]  # first request: longer than the timeout
    receiver.start()
    dispatcher = dispatcher_for(receiver.url, timeout=0.3)
    dispatcher.start()
    started = time.monotonic()
    for n in range(200):
        dispatcher.submit(failure(n))  # what the backup path calls
    assert time.monotonic() - started < 0.5
    wait_until(lambda: dispatcher.delivery_failures["webhook"] >= 1, what="the timeout")
    wait_until(lambda: len(receiver.behaviour.texts()) >= 2, timeout=15, what="delivery")
    dispatcher.stop()
    texts = receiver.behaviour.texts()
    assert any("object 0" in t for t in texts)  # the timed-out one, retried
    assert any("199 more" in t for t in texts)  # the rest, summarised


def test_429_is_retried_no_sooner_than_retry_after_then_with_backoff(receiver):
    receiver.behaviour.script = [(429, {"Retry-After": "1"}, 0.0)]
    receiver.start()
    dispatcher = dispatcher_for(receiver.url, retry_seconds=0.05)
    dispatcher.start()
    first = time.monotonic()
    dispatcher.submit(failure(1))
    wait_until(lambda: receiver.behaviour.texts(), timeout=10, what="the retry")
    dispatcher.stop()
    [(when, body)] = receiver.behaviour.received
    assert when - first >= 0.95  # the receiver asked for a second, not the 0.05 s backoff
    assert receiver.behaviour.answered == [429, 200]
    assert "object 1" in body["text"]


def test_a_refusal_for_good_is_not_retried(receiver):
    receiver.behaviour.then = (404, {}, 0.0)  # a revoked webhook
    receiver.start()
    dispatcher = dispatcher_for(receiver.url)
    dispatcher.submit(failure(1))
    dispatcher.stop()  # not started: delivers on this thread, then retries what may be retried
    assert receiver.behaviour.answered == [404]
    assert dispatcher.dropped == 1


class Failing:
    name = "webhook"
    calls = 0

    def wants(self, kind: AlertKind) -> bool:
        return True

    def send(self, notice: Any, message: Any) -> None:
        self.calls += 1
        raise ConnectionRefusedError("down")


def test_retries_back_off_doubling_up_to_the_cap():
    now = [0.0]
    failing = Failing()
    dispatcher = AlertDispatcher(
        [failing], retry_seconds=1.0, max_retry_seconds=4.0, monotonic=lambda: now[0]
    )
    dispatcher.submit(failure(1))  # not started: drive delivery by hand
    dispatcher._drain()
    attempts_at = []
    for tick in range(40):
        now[0] = tick * 0.5
        before = failing.calls
        dispatcher._retry_unsent()
        if failing.calls > before:
            attempts_at.append(now[0])
    # at 0 the send and _drain's final retry both failed (holds of 1 s, then 2 s); then
    # each failure doubles the hold up to the 4 s cap
    assert attempts_at[:5] == [2.0, 6.0, 10.0, 14.0, 18.0]


def test_the_url_comes_from_the_environment_so_config_yaml_holds_no_secret():
    hook = WebhookConfig(url_env="BACKUP_AGENT_WEBHOOK_URL")
    assert webhook_url(hook, {"BACKUP_AGENT_WEBHOOK_URL": "https://hooks.example/x"}) == (
        "https://hooks.example/x"
    )
    with pytest.raises(ConfigError, match="BACKUP_AGENT_WEBHOOK_URL is not set"):
        webhook_url(hook, {})
    with pytest.raises(ValidationError):
        WebhookConfig(url="https://a.example/x", url_env="X")
    with pytest.raises(ValidationError):
        WebhookConfig(url="file:///etc/passwd")
    alerts = AlertsConfig(webhook=hook)
    [channel] = build_channels(
        alerts, clients=None, environ={"BACKUP_AGENT_WEBHOOK_URL": "https://h.example/y"}
    )  # type: ignore[arg-type]
    assert channel.name == "webhook"
