# ruff: noqa: F811 - the fixtures imported from test_consumer are parameters here
"""The consumer with a VolumeCheck, against moto SQS: it pauses instead of churning.

No receive while paused (each one counts toward maxReceiveCount), what it holds is given
back at visibility 0, the volume is checked again with a growing back-off, and an object
larger than the room left is held back while smaller ones go on. The same on a real, full
filesystem: tests/functional/test_low_space.py and tests/reliability/test_low_space_agent.py.
"""

from __future__ import annotations

import errno
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from structlog.testing import capture_logs

import agent.pipeline.consumer as consumer_module
from agent.errors import DiskFull, VolumeNotReady
from agent.events import ObjectEvent
from agent.pipeline.consumer import MAX_VISIBILITY, Consumer, ConsumerSettings
from agent.pipeline.pause import HeldBack, Verdict
from agent.stats import Stats
from tests.support.aws_hooks import record_calls
from tests.support.waiting import wait_until
from tests.unit.test_consumer import (  # noqa: F401 - fixtures
    FakeProcessor,
    FakeTime,
    deleted_ids,
    put_message,
    queue_url,
    send,
    sqs,
    visibility_changes,
)

NEARLY_FULL = Verdict(False, "backup volume /v has 1.0 MiB free", free_bytes=1 << 20, headroom=0)
ROOMY = Verdict(True, "", free_bytes=1 << 30, headroom=1 << 29)


class FakeCheck:
    """A VolumeCheck whose answer the test sets; remembers every question."""

    def __init__(self, verdict: Verdict = ROOMY) -> None:
        self.verdict = verdict
        self.asked: list[bool] = []  # to_resume of each check
        self.probed: list[bool] = []  # probe of each check
        self._lock = threading.Lock()

    def check(self, *, to_resume: bool = False, probe: bool = False) -> Verdict:
        with self._lock:
            self.asked.append(to_resume)
            self.probed.append(probe)
            return self.verdict

    def probes(self) -> list[bool]:
        with self._lock:
            return list(self.probed)

    def strict_probes(self) -> list[bool]:
        """`probe` of each strict check (to_resume), read under the lock (the receiver may
        be checking while the test reads)."""
        with self._lock:
            return [probe for resume, probe in zip(self.asked, self.probed, strict=True) if resume]


class Listener:
    def __init__(self) -> None:
        self.paused: list[Verdict] = []
        self.resumed: list[tuple[Verdict, float]] = []
        self.held: list[HeldBack] = []

    def on_paused(self, verdict: Verdict) -> None:
        self.paused.append(verdict)

    def on_resumed(self, verdict: Verdict, paused_seconds: float) -> None:
        self.resumed.append((verdict, paused_seconds))

    def on_held_back(self, held: HeldBack) -> None:
        self.held.append(held)


@pytest.fixture
def make(sqs, queue_url) -> Iterator[Callable[..., Consumer]]:
    made: list[Consumer] = []

    def build(process: Any, check: FakeCheck, listener: Listener, **settings: Any) -> Consumer:
        options: dict[str, Any] = {
            "queue_url": queue_url,
            "workers": 2,
            "wait_time_seconds": 0,
            "visibility_timeout": 30,
            "pause_recheck_first": 0.05,
            "pause_recheck_max": 0.2,
        }
        options.update(settings)
        extra = {k: options.pop(k) for k in ("stats", "on_gave_up", "clock") if k in options}
        consumer = Consumer(
            sqs,
            process,
            ConsumerSettings(**options),
            volume_check=check,  # type: ignore[arg-type]
            listener=listener,
            **extra,
        )
        made.append(consumer)
        return consumer

    yield build
    for consumer in made:
        consumer.stop(5)
        for thread in consumer._threads:
            thread.join(10)
            assert not thread.is_alive(), thread.name


def receives(calls) -> int:
    return len(calls.of("ReceiveMessage"))


def receive_counts(calls) -> dict[str, int]:
    """The highest ApproximateReceiveCount each message was received with."""
    counts: dict[str, int] = {}
    for message in calls.received:
        count = int(message["Attributes"]["ApproximateReceiveCount"])
        counts[message["MessageId"]] = max(count, counts.get(message["MessageId"], 0))
    return counts


def test_a_volume_that_is_not_ready_pauses_before_any_receive(sqs, queue_url, make):
    calls = record_calls(sqs)
    check = FakeCheck(Verdict(False, "backup volume not ready: no marker"))
    listener, stats, processor = Listener(), Stats(), FakeProcessor()
    message_id = send(sqs, queue_url, put_message("waiting.txt"))
    consumer = make(processor, check, listener, stats=stats)

    consumer.start()
    wait_until(lambda: len(check.asked) >= 4, what="a few checks while paused")

    assert receives(calls) == 0  # nothing received: no receive counted
    assert [v.reason for v in listener.paused] == ["backup volume not ready: no marker"]
    assert stats.status_line().startswith("paused: backup volume not ready: no marker;")
    assert check.asked[0] is False and all(check.asked[1:])  # resuming asks the strict test

    check.verdict = ROOMY
    wait_until(lambda: deleted_ids(calls) == [message_id], what="the backup after resuming")
    assert len(listener.resumed) == 1 and stats.paused_reason is None
    assert receive_counts(calls) == {message_id: 1}
    assert consumer.paused() is None


def test_a_full_disk_gives_back_everything_at_visibility_0_and_receives_nothing_more(
    sqs,
    queue_url,
    make,
):
    calls = record_calls(sqs)
    check = FakeCheck()
    listener = Listener()
    started = threading.Event()
    release = threading.Event()

    def fill_the_disk(event: ObjectEvent) -> None:
        if event.key == "first.bin" and not started.is_set():
            started.set()
            release.wait(10)
            check.verdict = NEARLY_FULL  # the copy used the last of the room
            raise DiskFull("backup volume /v is full: No space left on device")

    ids = [send(sqs, queue_url, put_message(f"{name}.bin")) for name in ("first", "b", "c")]
    # one worker and one batch waiting ahead of it: the waiting ones are given back too
    consumer = make(FakeProcessor(fill_the_disk), check, listener, workers=1, receive_ahead=True)
    consumer.start()
    started.wait(10)
    wait_until(lambda: consumer.in_flight() == 3, what="a batch waiting behind the worker")
    with capture_logs() as logs:
        release.set()
        wait_until(lambda: len(visibility_changes(calls)) == 3, what="all three given back")
        before = receives(calls)
        wait_until(lambda: len(check.asked) >= 8, what="checks while paused")

    assert receives(calls) == before  # paused: no receive, the counts stop growing
    assert sorted(visibility_changes(calls)) == sorted((i, 0) for i in ids)
    assert consumer.in_flight() == 0
    assert [v.reason for v in listener.paused] == [NEARLY_FULL.reason]
    paused = next(e for e in logs if e["event"] == "consumer.paused")
    assert paused["free_bytes"] == 1 << 20
    failed = next(e for e in logs if e["event"] == "backup.failed")
    assert failed["paused"] is True and failed["error_type"] == "DiskFull"

    asked_before = len(calls.of("ReceiveMessage"))
    check.verdict = ROOMY
    wait_until(lambda: sorted(deleted_ids(calls)) == sorted(ids), what="all backed up")
    assert len(listener.paused) == 1 and len(listener.resumed) == 1
    assert max(receive_counts(calls).values()) == 2  # the receive before the pause, and one after
    # messages received ahead were given back unstarted: no more receiving ahead in this run
    # (agent/pipeline/last_run.py), one message per free worker
    assert {p["MaxNumberOfMessages"] for p in calls.of("ReceiveMessage")[asked_before:]} == {1}


def test_an_object_too_large_for_the_room_left_is_held_back_and_small_ones_go_on(
    sqs,
    queue_url,
    make,
):
    calls = record_calls(sqs)
    check, listener, stats = FakeCheck(), Listener(), Stats()

    def too_big(event: ObjectEvent) -> None:
        if event.key == "big.bin":
            raise DiskFull("backup volume /v: 1 GiB free, need 5 GiB plus the reserve")

    big = send(sqs, queue_url, put_message("big.bin", size=5 << 30))
    small = [send(sqs, queue_url, put_message(f"small-{n}.txt")) for n in range(4)]
    consumer = make(FakeProcessor(too_big), check, listener, stats=stats, hold_back_seconds=600)
    consumer.start()

    wait_until(lambda: sorted(deleted_ids(calls)) == sorted(small), what="the small ones")
    wait_until(lambda: visibility_changes(calls) == [(big, 600)], what="the big one held")
    assert consumer.paused() is None and listener.paused == []
    (held,) = listener.held
    assert (held.key, held.size, held.hold_seconds) == ("big.bin", 5 << 30, 600)
    assert held.receive_count == 1
    assert held.free_bytes == ROOMY.free_bytes and held.max_receive_count == 10
    assert stats.snapshot().held_back == 1
    assert stats.backups_failed == 1  # counted as a failed attempt, never as a pause


def test_a_held_back_message_at_its_last_receive_is_reported_as_given_up(sqs, queue_url, make):
    calls = record_calls(sqs)
    gave_up: list[tuple[str, list[str]]] = []

    def too_big(_event: ObjectEvent) -> None:
        raise DiskFull("no room for this one")

    big = send(sqs, queue_url, put_message("big.bin", size=5 << 30))
    consumer = make(
        FakeProcessor(too_big),
        FakeCheck(),
        Listener(),
        max_receive_count=1,
        on_gave_up=lambda mid, reasons: gave_up.append((mid, reasons)),
    )
    consumer.start()
    wait_until(lambda: gave_up, what="given up")
    assert gave_up == [(big, ["big.bin: too large for the space left"])]
    wait_until(lambda: len(visibility_changes(calls)) == 1)


def test_the_hold_doubles_with_each_receive_within_12_hours_of_the_receive(sqs, queue_url):
    consumer = Consumer(sqs, FakeProcessor(), ConsumerSettings(queue_url, hold_back_seconds=3600))
    assert [consumer.hold_delay(n, 0) for n in (1, 2, 3, 4)] == [3600, 7200, 14400, 28800]
    assert consumer.hold_delay(5, 0) == MAX_VISIBILITY - 60
    assert consumer.hold_delay(1, held_for=MAX_VISIBILITY - 100) == 40
    assert consumer.hold_delay(1, held_for=MAX_VISIBILITY) == 0


@pytest.mark.parametrize(
    "error",
    [
        VolumeNotReady("backup root /v has no marker: the volume is not mounted"),
        OSError(errno.ENOSPC, "No space left on device"),  # the journal's append
    ],
    ids=["volume-not-ready", "enospc"],
)
def test_a_lost_volume_or_an_enospc_anywhere_pauses_too(sqs, queue_url, make, error):
    calls = record_calls(sqs)
    check, listener = FakeCheck(), Listener()

    def fail(_event: ObjectEvent) -> None:
        if isinstance(error, VolumeNotReady):
            check.verdict = Verdict(False, f"backup volume not ready: {error}")
        else:
            check.verdict = NEARLY_FULL
        raise error

    message_id = send(sqs, queue_url, put_message("one.txt"))
    # long polls: the receiver is in one when the write fails; the message it parks must not
    # become visible before that poll returns (it would be received again at once)
    make(FakeProcessor(fail), check, listener, wait_time_seconds=1).start()
    wait_until(lambda: listener.paused, what="the pause")
    wait_until(lambda: visibility_changes(calls), what="the message given back")
    time.sleep(1.5)  # past the long poll, a few back-off steps: given back once, no receive
    assert visibility_changes(calls) == [(message_id, 0)]
    assert receive_counts(calls) == {message_id: 1}
    assert "not ready" in listener.paused[0].reason or listener.paused[0] == NEARLY_FULL


def test_while_paused_the_volume_is_checked_again_with_a_growing_back_off(
    sqs,
    queue_url,
    monkeypatch,
):
    fake = FakeTime()
    monkeypatch.setattr(consumer_module, "time", fake)
    check_times: list[float] = []

    class TimedCheck(FakeCheck):
        def check(self, *, to_resume: bool = False, probe: bool = False) -> Verdict:
            check_times.append(fake.now)
            return super().check(to_resume=to_resume, probe=probe)

    check = TimedCheck(NEARLY_FULL)
    consumer = Consumer(
        sqs,
        FakeProcessor(),
        ConsumerSettings(queue_url, wait_time_seconds=0, pause_recheck_max=30),
        clock=fake.monotonic,
        volume_check=check,  # type: ignore[arg-type]
    )
    consumer.start()
    wait_until(lambda: len(check_times) >= 8, what="checks")
    consumer.stop(1)
    for thread in consumer._threads:
        thread.join(10)

    gaps = [round(b - a) for a, b in itertools.pairwise(check_times[:8])]
    assert gaps == [2, 4, 8, 16, 30, 30, 30]


UNWRITABLE = Verdict(False, "backup volume /v cannot be written: [Errno 30] Read-only file system")


@pytest.mark.parametrize(
    "error",
    [
        OSError(errno.EROFS, "Read-only file system"),
        OSError(errno.EIO, "Input/output error"),
        RuntimeError("the journal's append failed"),  # raised from an EIO: its cause is seen
    ],
    ids=["erofs", "eio", "caused-by-eio"],
)
def test_a_write_the_volume_refuses_pauses_until_a_probe_write_succeeds(
    sqs, queue_url, make, error
):
    """A filesystem remounted read-only after an error, or a failing device: retrying every
    message walked the whole queue into the dead-letter queue (each retry is a receive)."""
    if isinstance(error, RuntimeError):
        error.__cause__ = OSError(errno.EIO, "Input/output error")
    calls = record_calls(sqs)
    check, listener = FakeCheck(), Listener()
    failing = threading.Event()
    failing.set()

    def refuse(_event: ObjectEvent) -> None:
        if failing.is_set():
            check.verdict = UNWRITABLE  # what the probe write meets now
            raise error

    message_id = send(sqs, queue_url, put_message("one.txt"))
    make(FakeProcessor(refuse), check, listener).start()
    wait_until(lambda: listener.paused, what="the pause")
    wait_until(lambda: visibility_changes(calls), what="the message given back")
    wait_until(lambda: len(check.asked) >= 5, what="checks while paused")
    assert [v.reason for v in listener.paused] == [UNWRITABLE.reason]
    assert receive_counts(calls) == {message_id: 1}  # paused: not received again
    # the check after the failed write, and every check to resume, write a probe
    strict = check.strict_probes()
    assert len(strict) >= 3 and all(strict)

    failing.clear()
    check.verdict = ROOMY  # the probe write succeeds: writes work again
    wait_until(lambda: deleted_ids(calls) == [message_id], what="the backup after resuming")
    assert len(listener.resumed) == 1
    probes_at_resume = len(check.probes())
    send(sqs, queue_url, put_message("two.txt"))
    wait_until(lambda: len(deleted_ids(calls)) == 2, what="the next backup")
    # resumed: the checks before each receive write no probe again
    assert not any(check.probes()[probes_at_resume:])


def test_a_refused_write_that_a_probe_write_passes_is_retried_without_a_pause(sqs, queue_url, make):
    calls = record_calls(sqs)
    check, listener = FakeCheck(), Listener()
    failed = threading.Event()

    def refuse_once(_event: ObjectEvent) -> None:
        if not failed.is_set():
            failed.set()
            raise OSError(errno.EIO, "Input/output error")

    message_id = send(sqs, queue_url, put_message("one.txt"))
    make(FakeProcessor(refuse_once), check, listener, retry_base_seconds=0).start()
    wait_until(lambda: deleted_ids(calls) == [message_id], what="backed up on the retry")
    assert listener.paused == []
    # one strict check, after the failed write, with a probe write: it passed, no pause
    assert check.strict_probes() == [True]


def test_a_message_parked_while_the_receiver_resumes_is_given_back(sqs, queue_url, make):
    """A worker's write fails for want of room during the receiver's back-off, after it gave
    back what was parked and before it resumes: its message was parked and stayed in flight,
    kept invisible by the heartbeat, for up to 12 hours (a review found it, 2026-12-02)."""
    calls = record_calls(sqs)
    listener = Listener()
    slow_started, slow_go, slow_parked = threading.Event(), threading.Event(), threading.Event()
    attempts: dict[str, int] = {}

    class ResumeAfterPark(FakeCheck):
        def check(self, *, to_resume: bool = False, probe: bool = False) -> Verdict:
            super().check(to_resume=to_resume, probe=probe)
            receiver = threading.current_thread().name == "consumer-receiver"
            if receiver and to_resume and not slow_parked.is_set():
                before = set(consumer._parked)  # the first one, if not given back yet
                slow_go.set()  # the slow one fails now, in the receiver's back-off
                wait_until(lambda: set(consumer._parked) - before, what="the slow one parked")
                slow_parked.set()
                self.verdict = ROOMY  # room again: this check resumes, and so do the next
            return self.verdict

    check = ResumeAfterPark()

    def behaviour(event: ObjectEvent) -> None:
        attempts[event.key] = attempts.get(event.key, 0) + 1
        if attempts[event.key] > 1:
            return  # backed up on its next receive
        if event.key == "slow.bin":
            slow_started.set()
            slow_go.wait(10)
            raise DiskFull("backup volume /v is full: No space left on device")
        slow_started.wait(10)  # both in progress before the first pause
        check.verdict = NEARLY_FULL
        raise DiskFull("backup volume /v is full: No space left on device")

    ids = [send(sqs, queue_url, put_message(name)) for name in ("first.bin", "slow.bin")]
    consumer = make(FakeProcessor(behaviour), check, listener, max_messages=2)
    consumer.start()
    wait_until(lambda: slow_parked.is_set(), what="the slow one parked as the pause ends")
    wait_until(lambda: sorted(deleted_ids(calls)) == sorted(ids), what="both backed up")
    assert consumer.in_flight() == 0


def test_the_volume_error_is_found_in_the_chain_unless_it_was_hidden():
    no_room = OSError(errno.ENOSPC, "No space left on device")
    caused = RuntimeError("the journal's append failed")
    caused.__cause__ = OSError(errno.EIO, "Input/output error")
    assert consumer_module._volume_errno(caused) == errno.EIO
    try:
        try:
            raise no_room
        except OSError:
            raise RuntimeError("while handling it")  # noqa: B904 - the implicit context
    except RuntimeError as exc:
        assert consumer_module._volume_errno(exc) == errno.ENOSPC
    try:
        try:
            raise no_room
        except OSError:
            raise RuntimeError("unrelated") from None  # the context hidden on purpose
    except RuntimeError as exc:
        assert consumer_module._volume_errno(exc) is None
    assert consumer_module._volume_errno(ValueError("no OSError at all")) is None
