"""Alerts: deduplication and rate limiting, rendering, delivery off the caller's thread."""

from __future__ import annotations

import threading

import botocore.exceptions
import pytest
from structlog.testing import capture_logs

from agent.monitoring.alerts import Alert, AlertKind, Notice, backup_gave_up
from agent.monitoring.channels import render, subject_for
from agent.monitoring.dispatcher import AlertDispatcher, AlertWindow
from tests.support.clock import FakeClock


class Recorder:
    name = "recorder"

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.notices: list[Notice] = []
        self.gate = gate

    def wants(self, kind: AlertKind) -> bool:
        return True

    def send(self, notice: Notice, message) -> None:
        if self.gate is not None:
            self.gate.wait(10)
        self.notices.append(notice)


def failure(n: int, at: float = 0.0) -> Alert:
    return Alert(
        AlertKind.BACKUP_FAILED, key=f"msg-{n}", summary=f"object {n}: AccessDenied", at=at
    )


def test_a_storm_of_ten_thousand_failures_yields_one_alert_and_one_summary_per_window():
    limiter = AlertWindow(window_seconds=300, max_examples=5)
    sent = []
    for n in range(10_000):
        now = n * 0.01  # 100 s of failures
        notice = limiter.offer(failure(n, now), now)
        if notice:
            sent.append(notice)
        sent.extend(limiter.due(now))
    sent.extend(limiter.due(300.0))
    assert [(n.count, n.is_summary) for n in sent] == [(1, False), (9_999, True)]
    summary = sent[1]
    assert [a.key for a in summary.examples] == ["msg-1", "msg-2", "msg-3", "msg-4", "msg-5"]
    assert limiter.suppressed == {"backup_failed": 9_999}


def test_a_storm_lasting_an_hour_yields_one_summary_per_window():
    limiter = AlertWindow(window_seconds=300)
    sent = []
    for second in range(3600):
        notice = limiter.offer(failure(second, second), second)
        sent.extend([notice] if notice else [])
        sent.extend(limiter.due(second))
    sent.extend(limiter.due(3600, flush=True))
    assert len(sent) == 13
    assert sum(n.count for n in sent) == 3600


def test_identical_alerts_count_but_appear_once_among_the_examples():
    limiter = AlertWindow(window_seconds=60)
    assert limiter.offer(failure(1), 0) is not None
    for _ in range(50):
        assert limiter.offer(failure(7), 1) is None
    (summary,) = limiter.due(60)
    assert summary.count == 50 and summary.distinct == 1


def test_kinds_are_limited_separately_and_quiet_periods_reset_the_limit():
    limiter = AlertWindow(window_seconds=60)
    disk = Alert(AlertKind.DISK_SPACE_LOW, key="/mnt/backups", summary="95% used")
    assert limiter.offer(failure(1), 0) is not None
    assert limiter.offer(disk, 1) is not None
    assert limiter.due(30) == []
    assert limiter.offer(failure(2), 61) is not None  # a new window: sent at once


def test_render_gives_text_and_escaped_html_with_counts_and_examples():
    notice = Notice(
        AlertKind.BACKUP_FAILED,
        42,
        (backup_gave_up("m-1", ["a<b>.txt: AccessDenied"]),),
        1_700_000_000.0,
        1_700_000_300.0,
        is_summary=True,
    )
    message = render(notice, {"InstanceId": "i-0abc", "Volume": "/mnt/backups"})
    assert message.subject == "[backup-agent] Backup failed for good: 42 more on i-0abc"
    assert "42 more alert(s)" in message.text and "a<b>.txt: AccessDenied" in message.text
    assert "a&lt;b&gt;.txt" in message.html and "<b>" not in message.html
    assert "InstanceId: i-0abc" in message.text


@pytest.mark.parametrize("where", ["é" * 200, "i" * 200, "x\ny" * 40, "i-" + "0" * 71])
def test_subjects_fit_sns_limits(where):
    """SNS Publish: "Subjects must be UTF-8 text with no line breaks or control characters, and
    less than 100 characters long" (https://docs.aws.amazon.com/sns/latest/api/API_Publish.html).
    moto accepts exactly 100 (it rejects only longer ones): docs/testing.md."""
    alert = Alert(AlertKind.INTEGRITY_FAILURE, key="k", summary="x")
    notice = Notice(AlertKind.INTEGRITY_FAILURE, 1, (alert,), 0, 0)
    subject = subject_for(notice, {"InstanceId": where})
    assert len(subject) < 100 and subject.isascii() and subject.isprintable()


def test_submit_never_waits_for_delivery():
    gate = threading.Event()
    channel = Recorder(gate)
    dispatcher = AlertDispatcher([channel], window_seconds=300, tick_seconds=0.05)
    dispatcher.start()
    for n in range(1_000):
        dispatcher.submit(failure(n))  # the channel is blocked: these must still return
    assert channel.notices == []
    gate.set()
    dispatcher.stop(timeout=10)
    assert [(n.count, n.is_summary) for n in channel.notices] == [(1, False), (999, True)]


def test_summaries_are_sent_when_their_window_ends():
    clock = FakeClock()
    channel = Recorder()
    dispatcher = AlertDispatcher(
        [channel], window_seconds=60, clock=clock.seconds, tick_seconds=0.01
    )
    dispatcher.start()
    try:
        dispatcher.submit(failure(1))
        dispatcher.submit(failure(2))
        clock.advance(seconds=61)
        deadline = threading.Event()
        for _ in range(1000):
            if len(channel.notices) == 2:
                break
            deadline.wait(0.01)
    finally:
        dispatcher.stop()
    assert [(n.count, n.is_summary) for n in channel.notices] == [(1, False), (1, True)]


class Broken:
    name = "sns"

    def __init__(self) -> None:
        self.calls = 0

    def wants(self, kind: AlertKind) -> bool:
        return True

    def send(self, notice, message) -> None:
        self.calls += 1
        raise botocore.exceptions.EndpointConnectionError(endpoint_url="https://sns")


def test_a_delivery_outage_is_logged_once_and_never_raised():
    channel = Broken()
    dispatcher = AlertDispatcher([channel], window_seconds=0.0001)
    with capture_logs() as logs:
        for n in range(5):
            dispatcher.submit(failure(n, at=n))
        dispatcher.stop()  # never started: delivers on this thread
    assert channel.calls >= 2
    assert [e["event"] for e in logs].count("alert.delivery_failed") == 1
    assert dispatcher.delivery_failures["sns"] == channel.calls


def test_without_channels_alerts_are_dropped_quietly():
    dispatcher = AlertDispatcher([])
    dispatcher.submit(failure(1))
    dispatcher.stop()
    assert not dispatcher.enabled and dispatcher.sent == {}


class Crashing(Broken):
    name = "email"

    def send(self, notice, message) -> None:
        self.calls += 1
        raise KeyError("template")


def test_an_unexpected_channel_error_does_not_stop_delivery_to_other_channels():
    crashing, recorder = Crashing(), Recorder()
    dispatcher = AlertDispatcher([crashing, recorder], window_seconds=300, tick_seconds=0.01)
    dispatcher.start()
    dispatcher.submit(failure(1))
    dispatcher.submit(Alert(AlertKind.DISK_SPACE_LOW, key="/mnt", summary="90% used"))
    dispatcher.stop()
    assert crashing.calls == 4  # both notices, then both once more at stop (kept for retry)
    assert [n.kind for n in recorder.notices] == [AlertKind.BACKUP_FAILED, AlertKind.DISK_SPACE_LOW]


def wait_for(predicate, timeout: float = 10.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met"
        time.sleep(0.01)


def test_a_notice_a_channel_failed_to_take_is_retried_until_it_answers():
    class Flaky(Recorder):
        name = "sns"
        down = True

        def send(self, notice, message) -> None:
            if self.down:
                raise ConnectionError("sns down")
            super().send(notice, message)

    flaky = Flaky()
    dispatcher = AlertDispatcher([flaky], tick_seconds=0.01, retry_seconds=0.01)
    dispatcher.start()
    dispatcher.submit(failure(1))
    wait_for(lambda: dispatcher.delivery_failures["sns"] >= 2)  # retried while down
    flaky.down = False
    wait_for(lambda: dispatcher.sent_counts() == {"backup_failed": 1})
    dispatcher.stop()
    assert [n.kind for n in flaky.notices] == [AlertKind.BACKUP_FAILED]  # delivered once


class Refused(Broken):
    name = "email"

    def send(self, notice, message) -> None:
        self.calls += 1
        raise botocore.exceptions.ClientError(
            {"Error": {"Code": "MessageRejected", "Message": "Email address is not verified."}},
            "SendRawEmail",
        )


def test_a_notice_refused_for_good_is_not_retried_and_says_so():
    refused, outage = Refused(), Broken()
    dispatcher = AlertDispatcher([refused, outage], window_seconds=300)
    with capture_logs() as logs:
        dispatcher.submit(failure(1))
        dispatcher.stop()  # never started: delivers on this thread, then retries once

    assert refused.calls == 1  # a permanent refusal is not retried ...
    assert outage.calls == 2  # ... an outage is
    dropped = [e for e in logs if e["event"] == "alert.unsent_dropped"]
    assert [(e["channel"], e["reason"], e["code"]) for e in dropped] == [
        ("email", "permanent", "MessageRejected")
    ]
    assert dispatcher.dropped == 1
