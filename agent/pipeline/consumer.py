"""The SQS consumer: long-poll, fan out to workers, keep messages invisible while they
run, delete only after every record is durable and recorded.

Kept whole: one class whose threads share one in-flight table under one lock.

Lifecycle: `start()`, then `stop(timeout)`: stop receiving → give back messages no worker
has started → let in-flight work finish until the deadline → make what is unfinished
visible again → return.
Threads: one receiver, N workers, one heartbeat (visibility extension), one that deletes
finished messages in batches (agent/pipeline/deletes.py).

Committing (agent/pipeline/commit.py): when `process` answers COMMITTING (the copy is
durable, its record is with the commit stage), the worker takes its next message; the
message stays in flight (extended by the heartbeat, counted toward the receive limit, which
grows by at most `max_messages` for messages waiting on the committer) and is settled once
every record of it is resolved: deleted when all are recorded, or handled as a failed
`process` would be (retry delay, permanent, pause), message by message. Successes are
counted then, not before. The committer hears from the workers how many are busy and sees
how many received messages wait for one, so that a small batch waits for the records under
way (`Committer.expect`, `Committer.follow`).

Receiving ahead (`receive_ahead`, the daemon's default) happens only when the last run ended
well and nothing received ahead has been given back unstarted in this run
(agent/pipeline/last_run.py): a crash or restart loop cannot walk messages nobody attempted
into the dead-letter queue.

Paused (agent/pipeline/pause.py): with a `VolumeCheck`, the receiver checks the volume before
each receive. When it is not ready or out of room (or a write says so) the consumer stops
receiving, gives back what it holds at visibility 0, and checks again with a back-off until
there is room; a message whose object alone does not fit is held back instead.
"""

from __future__ import annotations

import errno
import functools
import queue
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import botocore.exceptions
import structlog

from agent.aws import error_code, lost_handle
from agent.errors import DiskFull, MalformedMessage, PermanentError, VolumeNotReady
from agent.events import IgnoredEvent, ObjectEvent, ParsedMessage, parse_message
from agent.pipeline.backup import Outcome, Processor, Result
from agent.pipeline.commit import Committer, Pending
from agent.pipeline.deletes import DeleteBatcher
from agent.pipeline.delivery import Delivery, delivering
from agent.pipeline.last_run import LastRun
from agent.pipeline.pause import (
    Backoff,
    HeldBack,
    NoListener,
    PauseListener,
    Verdict,
    VolumeCheck,
)
from agent.stats import Stats

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient

log = structlog.get_logger("agent.consumer")

MAX_VISIBILITY = 43_200  # SQS caps a message's total invisibility at 12 hours
EMPTY_RECEIVE_PAUSE = 0.2


@dataclass(frozen=True)
class ConsumerSettings:
    queue_url: str
    workers: int = 4
    wait_time_seconds: int = 20
    visibility_timeout: int = 300
    max_messages: int = 10
    max_bytes_in_flight: int = 2 << 30
    max_receive_count: int = 10
    retry_base_seconds: float = 5.0
    retry_max_seconds: float = 900.0
    receive_ahead: bool = False
    hold_back_seconds: float = 3600.0  # a message whose object does not fit the room left
    pause_recheck_first: float = 2.0  # while paused: first wait before checking the volume
    pause_recheck_max: float = 60.0  # … doubling up to this


@dataclass
class InFlight:
    message_id: str
    receipt_handle: str
    receive_count: int
    received_at: float
    extended_at: float
    extendable: bool = True


@dataclass
class _Failures:
    retryable: list[str] = field(default_factory=list)
    permanent: list[str] = field(default_factory=list)
    paused: list[str] = field(default_factory=list)  # no volume or no room: give back at once
    too_big: list[tuple[ObjectEvent, Verdict]] = field(default_factory=list)  # hold back
    committing: list[tuple[ObjectEvent, Pending[Result]]] = field(default_factory=list)


class ByteBudget:
    """Caps the bytes of objects being downloaded at once (one object may exceed it alone)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._used = 0
        self._cond = threading.Condition()

    def acquire(self, amount: int) -> int:
        amount = min(amount, self.limit)
        with self._cond:
            self._cond.wait_for(lambda: self._used + amount <= self.limit)
            self._used += amount
        return amount

    def release(self, amount: int) -> None:
        with self._cond:
            self._used -= amount
            self._cond.notify_all()


class Consumer:
    def __init__(
        self,
        sqs: SQSClient,
        process: Processor,
        settings: ConsumerSettings,
        *,
        stats: Stats | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        on_gave_up: Callable[[str, list[str]], None] | None = None,
        volume_check: VolumeCheck | None = None,
        listener: PauseListener | None = None,
        last_run: LastRun | None = None,
        committer: Committer | None = None,
    ) -> None:
        self.sqs = sqs
        self.process = process
        self.settings = settings
        self.stats = stats or Stats()
        self.clock = clock
        self.wall_clock = wall_clock
        self.on_gave_up = on_gave_up
        self.budget = ByteBudget(settings.max_bytes_in_flight)
        self._capacity = settings.workers
        self._receive_ahead = settings.receive_ahead
        # Receiving ahead is safe (see agent/pipeline/last_run.py) until a message received
        # ahead is given back unstarted; without a `last_run`, as the settings say.
        self.last_run = last_run
        self._ahead_safe = True
        self._gave_back_unstarted = False
        self._work: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._in_flight: dict[str, InFlight] = {}
        self._lock = threading.Condition()
        self._receiving = threading.Event()
        self._stopped = threading.Event()
        self._threads: list[threading.Thread] = []
        self._workers: list[threading.Thread] = []
        self._receive_failures = 0
        self._deletes = DeleteBatcher(sqs, settings.queue_url)
        self.volume_check = volume_check
        self.listener: PauseListener = listener or NoListener()
        self._paused: Verdict | None = None
        self._paused_at = 0.0
        self._probe_to_resume = False  # paused by a refused write: resuming needs a probe write
        # Receipt handles of messages a worker could not write for want of room or volume:
        # still in flight (extended), given back by the receiver between two receives.
        self._parked: set[str] = set()
        self._committing = 0  # messages whose records wait for the committer
        self._backoff = Backoff(settings.pause_recheck_first, settings.pause_recheck_max)
        # The commit stage: told +1 when a worker starts on messages and -1 when it has none
        # left to start (`expect`), and how many received messages wait for a worker
        # (`follow`), so that a small batch waits for the records under way
        # (agent/pipeline/commit.py, "Lingering").
        self._committer = committer
        if committer is not None:
            committer.follow(self._work.qsize, workers=lambda: self._capacity)

    # -- start and stop --------------------------------------------------------------

    def start(self) -> None:
        if self.last_run is not None:
            self._ahead_safe = self.last_run.begin()
        self._receiving.set()
        self._spawn(self._receive_loop, "receiver")
        self._spawn(self._heartbeat_loop, "heartbeat")
        self._ensure_workers(self._capacity)

    def set_workers(self, workers: int) -> None:
        """Change concurrency live; extra workers finish their message, then idle."""
        with self._lock:
            self._capacity = workers
            self._lock.notify_all()
        self._ensure_workers(workers)

    def set_receive_ahead(self, enabled: bool) -> None:
        """Switch receiving one batch ahead of the workers on or off, live."""
        with self._lock:
            self._receive_ahead = enabled
            self._lock.notify_all()

    def stop(self, timeout: float) -> None:
        """Stop receiving, drain until `timeout`, release what is left. Idempotent."""
        log.info("consumer.stopping", in_flight=len(self._in_flight), drain_timeout=timeout)
        self._receiving.clear()
        deadline = self.clock() + timeout
        unstarted = self._take_waiting()
        self._note_unstarted(unstarted)
        waiting = unstarted + self._take_parked()
        for item in waiting:  # received but not started: give back at once, not drained
            self._change_visibility(item, 0, "released_on_shutdown")
        with self._lock:
            self._lock.notify_all()
            self._lock.wait_for(
                lambda: not self._in_flight and self._work.empty(),
                timeout=max(0.0, deadline - self.clock()),
            )
            unfinished = list(self._in_flight.values())
            self._in_flight.clear()
        for item in unfinished:
            self._change_visibility(item, 0, "released_on_shutdown")
        self._deletes.close()  # finished messages still waiting for their batch
        if self.last_run is not None:
            self.last_run.end(well=not self._gave_back_unstarted)
        self._stopped.set()
        for _ in self._workers:
            self._work.put(None)
        log.info("consumer.stopped", released=len(unfinished) + len(waiting))

    def _take_waiting(self) -> list[InFlight]:
        """Remove the received messages no worker has started yet from in-flight."""
        taken: list[InFlight] = []
        while True:
            try:
                message = self._work.get_nowait()
            except queue.Empty:
                break
            if message is None:  # a stop sentinel from an earlier stop(): keep it
                self._work.put(None)
                break
            with self._lock:
                item = self._in_flight.pop(message["ReceiptHandle"], None)
                self.stats.set_in_flight(len(self._in_flight))
            if item is not None:
                taken.append(item)
        return taken

    def _note_unstarted(self, given_back: list[InFlight]) -> None:
        """Messages no worker started are being given back: each paid a receive for
        nothing, so no more receiving ahead in this run, nor in the next one."""
        if given_back:
            with self._lock:
                self._gave_back_unstarted = True
                self._ahead_safe = False

    def _take_parked(self) -> list[InFlight]:
        """Remove the messages parked by a pause from in-flight."""
        with self._lock:
            if not self._parked:  # asked before every receive: nothing to change or wake
                return []
            parked = [self._in_flight.pop(h) for h in self._parked if h in self._in_flight]
            self._parked.clear()
            self.stats.set_in_flight(len(self._in_flight))
            self._lock.notify_all()
        return parked

    def alive(self) -> bool:
        """False once the receiver or heartbeat thread has died (stop() also ends them)."""
        return all(t.is_alive() for t in self._threads if t not in self._workers)

    def in_flight(self) -> int:
        with self._lock:
            return len(self._in_flight)

    def working(self) -> int:
        """Messages a worker has started (in flight minus those received ahead, waiting)."""
        with self._lock:
            return max(0, len(self._in_flight) - self._work.qsize())

    def paused(self) -> Verdict | None:
        """Why the consumer is not receiving (low space, no volume), or None."""
        with self._lock:
            return self._paused

    def is_idle(self) -> bool:
        with self._lock:
            return not self._in_flight and self._work.empty()

    def _spawn(
        self, target: Callable[[], None], name: str, listed: list[threading.Thread] | None = None
    ) -> threading.Thread:
        """Start a thread, listed (in `_threads`, and in `listed`) before it runs: a worker
        whose first message stops the consumer finds itself among the workers to stop."""
        thread = threading.Thread(target=target, name=f"consumer-{name}", daemon=True)
        self._threads.append(thread)
        if listed is not None:
            listed.append(thread)
        thread.start()
        return thread

    def _ensure_workers(self, count: int) -> None:
        while len(self._workers) < count:
            self._spawn(self._work_loop, f"worker-{len(self._workers)}", self._workers)

    # -- receiving -------------------------------------------------------------------

    def _receive_loop(self) -> None:
        while self._receiving.is_set():
            if not self._may_receive():
                continue
            free = self._wait_for_free_worker()
            if free <= 0:
                continue
            started = self.clock()
            messages = self._receive(free)
            if not messages and self.clock() - started < EMPTY_RECEIVE_PAUSE:
                self._sleep_unless_stopping(EMPTY_RECEIVE_PAUSE)  # short polls must not spin
            for message in messages:
                self._accept(message)

    def _wait_for_free_worker(self) -> int:
        """How many messages to receive next (0: stopping or paused); waits until there is room."""
        with self._lock:
            self._lock.wait_for(
                lambda: (
                    not self._receiving.is_set() or self._paused is not None or self._room() > 0
                ),
                timeout=1.0,
            )
            if not self._receiving.is_set() or self._paused is not None:
                return 0
            return min(self.settings.max_messages, self._room())

    def _room(self) -> int:
        """One message per free worker; with `receive_ahead` (while safe), once every
        received message has been picked up, a further batch that waits in flight (kept
        invisible by the heartbeat) so that receives stay full and a worker finds its next
        message ready."""
        # messages waiting for the committer need no worker: up to `max_messages` of them
        # do not take one's place (the commit stage's batch), the rest count in full
        committing = min(self._committing, self.settings.max_messages)
        if not (self._receive_ahead and self._ahead_safe):
            return self._capacity + committing - len(self._in_flight)
        if not self._work.empty():
            return 0
        return self._capacity + self.settings.max_messages + committing - len(self._in_flight)

    def _receive(self, count: int) -> list[dict[str, Any]]:
        try:
            response = self.sqs.receive_message(
                QueueUrl=self.settings.queue_url,
                MaxNumberOfMessages=count,
                WaitTimeSeconds=self.settings.wait_time_seconds,
                VisibilityTimeout=self.settings.visibility_timeout,
                MessageSystemAttributeNames=["ApproximateReceiveCount", "SentTimestamp"],
            )
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            self._receive_failures += 1
            delay = min(60.0, 2.0 ** min(self._receive_failures, 6)) * random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not crypto
            if self._receive_failures == 1:
                log.error("receive.failed", error=str(exc), code=error_code(exc))
            else:
                log.debug("receive.still_failing", attempts=self._receive_failures)
            self._sleep_unless_stopping(delay)
            return []
        if self._receive_failures:
            log.info("receive.recovered", after_attempts=self._receive_failures)
            self._receive_failures = 0
        return [cast("dict[str, Any]", m) for m in response.get("Messages", [])]

    def _sleep_unless_stopping(self, seconds: float) -> None:
        end = self.clock() + seconds
        while self._receiving.is_set() and self.clock() < end:
            time.sleep(min(0.2, max(0.0, end - self.clock())))

    def _accept(self, message: dict[str, Any]) -> None:
        now = self.clock()
        item = InFlight(
            message_id=message["MessageId"],
            receipt_handle=message["ReceiptHandle"],
            receive_count=int(message.get("Attributes", {}).get("ApproximateReceiveCount", 1)),
            received_at=now,
            extended_at=now,
        )
        if not self._receiving.is_set():
            self._change_visibility(item, 0, "released_on_shutdown")
            return
        if self.paused() is not None:  # received while a worker found the volume full
            self._change_visibility(item, 0, "released_while_paused")
            return
        with self._lock:
            self._in_flight[item.receipt_handle] = item
            self.stats.set_in_flight(len(self._in_flight))
        self._work.put(message)

    # -- pausing -------------------------------------------------------------------------

    def _may_receive(self) -> bool:
        """Checks the volume before a receive. Paused: waits one back-off step, checks with
        the stricter resume test, and resumes or stays paused (False: receive nothing)."""
        if self.volume_check is None:
            return True
        if self.paused() is None:
            # parked by a pause that ended before the receiver gave them back (a worker's
            # failure settled during the back-off, or after the resume): given back now, or
            # they would stay in flight, invisible, kept so by the heartbeat
            self._give_back_parked()
            verdict = self.volume_check.check()
            if verdict.ok:
                return True
            self._pause(verdict)
        self._give_back_held()
        self._sleep_unless_stopping(self._backoff.next())
        if not self._receiving.is_set():
            return False
        verdict = self.volume_check.check(to_resume=True, probe=self._probe_to_resume)
        if verdict.ok:
            self._resume(verdict)
            return True
        self._still_paused(verdict)
        return False

    def _pause(self, verdict: Verdict) -> None:
        """Stop receiving (from any thread). The receiver then gives back what the consumer
        holds (`_give_back_held`); workers finish what they have started."""
        with self._lock:
            first = self._paused is None
            if first:
                self._paused_at = self.clock()
                self._backoff.reset()
            self._paused = verdict
            self._lock.notify_all()
        self.stats.set_paused(verdict.reason)
        if first:
            log.warning(
                "consumer.paused",
                reason=verdict.reason,
                free_bytes=verdict.free_bytes,
                headroom_bytes=verdict.headroom,
            )
            self.listener.on_paused(verdict)

    def _give_back_held(self) -> None:
        """Paused: give back, at visibility 0, the messages no worker has started and those a
        worker could not write. Only the receiver does this, between two receives: a message
        made visible while a long poll is under way would be received again at once, one
        more receive toward the redrive."""
        unstarted = self._take_waiting()
        self._note_unstarted(unstarted)
        self._give_back(unstarted + self._take_parked(), "released_while_paused", "paused")

    def _give_back_parked(self) -> None:
        self._give_back(self._take_parked(), "released_after_pause", "parked by a pause")

    def _give_back(self, items: list[InFlight], reason: str, why: str) -> None:
        """Make `items` (out of in-flight already) visible again at once."""
        for item in items:
            self._change_visibility(item, 0, reason)
        if items:
            log.info("consumer.gave_back", messages=len(items), why=why)

    def _still_paused(self, verdict: Verdict) -> None:
        with self._lock:
            previous, self._paused = self._paused, verdict
        if previous is not None and previous.reason != verdict.reason:
            self.stats.set_paused(verdict.reason)
            log.info("consumer.still_paused", reason=verdict.reason, free_bytes=verdict.free_bytes)

    def _resume(self, verdict: Verdict) -> None:
        with self._lock:
            self._paused = None
            self._probe_to_resume = False
            paused_for = max(0.0, self.clock() - self._paused_at)
            self._lock.notify_all()
        self.stats.set_paused(None)
        log.info(
            "consumer.resumed",
            paused_seconds=round(paused_for, 1),
            free_bytes=verdict.free_bytes,
            headroom_bytes=verdict.headroom,
        )
        self.listener.on_resumed(verdict, paused_for)

    def _volume_failure(self, event: ObjectEvent, exc: Exception, failures: _Failures) -> None:
        """A write failed for want of volume or room, or the volume refused it (read-only,
        an I/O error): pause, or hold back this one object when the volume still has
        comfortable room (it is simply too large for it), or retry it as any failure when a
        refused write was passing (a probe write succeeds)."""
        assert self.volume_check is not None
        self.stats.record_failure(type(exc).__name__)
        refused = _write_refused(exc)
        if isinstance(exc, VolumeNotReady):
            verdict = Verdict(False, f"backup volume not ready: {exc}")
        else:
            verdict = self.volume_check.check(to_resume=True, probe=refused)
        if verdict.ok and refused:
            failures.retryable.append(f"{event.key}: {exc}")
            _retryable_failure(event, exc)
            return
        if verdict.ok:
            failures.too_big.append((event, verdict))
            log.warning(
                "backup.too_big",
                bucket=event.bucket,
                key=event.key,
                size=event.size,
                free_bytes=verdict.free_bytes,
                headroom_bytes=verdict.headroom,
                error=str(exc),
            )
            return
        failures.paused.append(f"{event.key}: {exc}")
        _retryable_failure(event, exc, paused=True)
        if refused:
            with self._lock:
                self._probe_to_resume = True  # only a write tells that writes work again
        self._pause(verdict)

    def hold_delay(self, receive_count: int, held_for: float) -> int:
        """Visibility of a held-back message: `hold_back_seconds`, doubled per receive, within
        SQS's 12 hours from the receive."""
        wanted = self.settings.hold_back_seconds * 2 ** max(0, receive_count - 1)
        return int(max(0.0, min(wanted, MAX_VISIBILITY - held_for - 60)))

    # -- working ---------------------------------------------------------------------

    def _expect(self, change: int) -> None:
        if self._committer is not None:
            self._committer.expect(change)

    def _work_loop(self) -> None:
        busy = False  # this worker counted in the committer's `expect`
        try:
            while True:
                try:
                    message = self._work.get_nowait()  # received ahead: still busy
                except queue.Empty:
                    if busy:
                        self._expect(-1)
                        busy = False
                    message = self._work.get()
                if message is None:
                    return
                if not busy:
                    self._expect(1)
                    busy = True
                self._work_on(message)
        finally:
            if busy:
                self._expect(-1)

    def _work_on(self, message: dict[str, Any]) -> None:
        with self._lock:
            self._lock.notify_all()  # with receive_ahead, the next batch may come now
            if self._paused is not None and message["ReceiptHandle"] in self._in_flight:
                self._parked.add(message["ReceiptHandle"])  # paused: start nothing new
                self._gave_back_unstarted = True  # given back by the receiver, unstarted
                self._ahead_safe = False
                return
        try:
            self._handle(message)
        except Exception:
            log.exception("message.handler_crashed", message_id=message.get("MessageId"))
            self._finish(message, release_after=self.settings.retry_base_seconds)

    def _handle(self, message: dict[str, Any]) -> None:
        message_id = message["MessageId"]
        try:
            parsed = parse_message(message.get("Body", ""))
        except MalformedMessage as exc:
            log.error("message.malformed", message_id=message_id, reason=str(exc))
            self.stats.record_failure("malformed")
            self._finish(message, release_after=0)
            return
        for ignored in parsed.ignored:
            self._ignore(message_id, ignored)
        if not parsed.events:  # a test event, tagging, ACL, restore requested, ...: done
            self._finish(message, delete=True)
            return
        item = self._lookup(message)
        attempt = Delivery(message_id, item.receive_count if item else 1)
        with delivering(attempt):
            failures = self._process_all(parsed)
        if failures.committing:
            self._settle_when_committed(message, failures)
            return
        self._settle(message, failures)

    def _settle_when_committed(self, message: dict[str, Any], failures: _Failures) -> None:
        """Settle `message` once the committer has resolved every record of it (in the
        committer's thread, or here if it already has)."""
        waiting = list(failures.committing)
        failures.committing.clear()
        left = [len(waiting)]
        guard = threading.Lock()
        with self._lock:
            self._committing += 1
            self._lock.notify_all()  # its worker is free: the receiver may receive again

        def resolved(event: ObjectEvent, outcome: Result | Exception) -> None:
            with guard:
                if isinstance(outcome, Exception):
                    self._failed(event, outcome, failures)
                else:
                    self._succeeded(event, outcome)
                left[0] -= 1
                last = left[0] == 0
            if last:
                try:
                    self._settle(message, failures)
                finally:  # after it left in-flight: the receive limit is never exceeded
                    with self._lock:
                        self._committing -= 1
                        self._lock.notify_all()

        for event, pending in waiting:
            pending.on_done(functools.partial(resolved, event))

    def _ignore(self, message_id: str, ignored: IgnoredEvent) -> None:
        """Counted every time; logged at info the first time a name is seen, then at debug
        (tagging or ACL changes can come by the thousand and say nothing to the backup)."""
        first = self.stats.record_ignored(ignored.event_name) == 1
        (log.info if first else log.debug)(
            "event.ignored",
            event_name=ignored.event_name,
            bucket=ignored.bucket,
            key=ignored.key,
            message_id=message_id,
            why="changes no object's bytes; the message is deleted",
        )

    def _process_all(self, parsed: ParsedMessage) -> _Failures:
        failures = _Failures()
        reserve = sum(e.size or 0 for e in parsed.events)
        held = self.budget.acquire(reserve) if reserve else 0
        try:
            for event in parsed.events:
                self._process_one(event, failures)
                if failures.paused:
                    break  # the rest would fail the same way; the message comes back whole
        finally:
            if held:
                self.budget.release(held)
        return failures

    def _process_one(self, event: ObjectEvent, failures: _Failures) -> None:
        try:
            result = self.process(event)
        except Exception as exc:  # noqa: BLE001 - sorted by _failed, never dropped
            self._failed(event, exc, failures)
            return
        if result.pending is not None:
            failures.committing.append((event, result.pending))
            return
        self._succeeded(event, result)

    def _failed(self, event: ObjectEvent, exc: Exception, failures: _Failures) -> None:
        """A failed `process` (or commit) of `event`: noted in `failures`, counted, logged."""
        if isinstance(exc, PermanentError):
            failures.permanent.append(f"{event.key}: {exc}")
            self.stats.record_failure(type(exc).__name__)
            log.error(
                "backup.failed", bucket=event.bucket, key=event.key, error=str(exc), retryable=False
            )
            return
        # everything else is retried, never dropped
        if self.volume_check is not None and _is_volume_failure(exc):
            self._volume_failure(event, exc, failures)
            return
        failures.retryable.append(f"{event.key}: {exc}")
        self.stats.record_failure(type(exc).__name__)
        _retryable_failure(event, exc)

    def _succeeded(self, event: ObjectEvent, result: Result) -> None:
        if result.outcome is Outcome.ARCHIVED:
            return  # not a backup; BackupService counts the versions found unreadable
        lag = max(0.0, self.wall_clock() - event.event_time.timestamp())
        size = result.copy.size if result.copy else 0
        stored = result.copy.stored_size if result.copy and not result.copy.deduplicated else 0
        self.stats.record_success(result.outcome.value, size, stored, lag)
        if result.record is not None and result.record.category:  # counted like backups
            self.stats.record_category(result.record.category)

    def _settle(self, message: dict[str, Any], failures: _Failures) -> None:
        if failures.paused:
            # Parked in flight; the receiver gives it back (visibility 0) once no receive is
            # under way. While paused nothing is received: its count grows again only when
            # the volume has room.
            with self._lock:
                if message["ReceiptHandle"] in self._in_flight:
                    self._parked.add(message["ReceiptHandle"])
                self._lock.notify_all()
            return
        if not failures.retryable and not failures.permanent and not failures.too_big:
            self._finish(message, delete=True)
            return
        item = self._lookup(message)
        count = item.receive_count if item else 1
        if failures.too_big:
            self._hold_back(message, item, count, failures)
            return
        if count >= self.settings.max_receive_count:
            reasons = failures.permanent + failures.retryable
            log.error(
                "message.gave_up",
                message_id=message["MessageId"],
                receive_count=count,
                reasons=reasons[:5],
            )
            if self.on_gave_up:
                self.on_gave_up(message["MessageId"], reasons)
        if failures.retryable:
            self._finish(message, release_after=self.retry_delay(count))
        else:
            self._finish(message)  # permanent: left invisible; SQS redrives it to the DLQ

    def _hold_back(
        self, message: dict[str, Any], item: InFlight | None, count: int, failures: _Failures
    ) -> None:
        held_for = self.clock() - item.received_at if item else 0.0
        hold = self.hold_delay(count, held_for)
        for event, verdict in failures.too_big:
            self.stats.record_held_back()
            self.listener.on_held_back(
                HeldBack(
                    message_id=message["MessageId"],
                    bucket=event.bucket,
                    key=event.key,
                    size=event.size,
                    free_bytes=verdict.free_bytes,
                    headroom=verdict.headroom,
                    hold_seconds=hold,
                    receive_count=count,
                    max_receive_count=self.settings.max_receive_count,
                )
            )
        log.warning(
            "message.held_back",
            message_id=message["MessageId"],
            hold_seconds=hold,
            receive_count=count,
            keys=[event.key for event, _ in failures.too_big][:5],
        )
        if count >= self.settings.max_receive_count:
            reasons = [f"{e.key}: too large for the space left" for e, _ in failures.too_big]
            log.error("message.gave_up", message_id=message["MessageId"], receive_count=count)
            if self.on_gave_up:
                self.on_gave_up(message["MessageId"], reasons)
        self._finish(message, release_after=hold, why="held_back")

    def retry_delay(self, receive_count: int) -> float:
        base = self.settings.retry_base_seconds * 2 ** max(0, receive_count - 1)
        capped = min(self.settings.retry_max_seconds, base)
        return float(capped * random.uniform(0.8, 1.2))  # noqa: S311 - jitter, not crypto

    def _lookup(self, message: dict[str, Any]) -> InFlight | None:
        with self._lock:
            return self._in_flight.get(message["ReceiptHandle"])

    def _finish(
        self,
        message: dict[str, Any],
        *,
        delete: bool = False,
        release_after: float | None = None,
        why: str = "released_for_retry",
    ) -> None:
        with self._lock:
            item = self._in_flight.get(message["ReceiptHandle"])
        if item is None:
            return  # already released by a shutdown
        # Settle first, then leave in_flight: stop() must not return (and the process exit)
        # while a delete is still on its way.
        if delete:
            self._delete(item)
        elif release_after is not None:
            self._change_visibility(item, int(release_after), why)
        with self._lock:
            self._in_flight.pop(message["ReceiptHandle"], None)
            self.stats.set_in_flight(len(self._in_flight))
            self._lock.notify_all()

    def _delete(self, item: InFlight) -> None:
        # Batched with other finished messages and sent within milliseconds
        # (agent/pipeline/deletes.py).
        self._deletes.add(item.message_id, item.receipt_handle)

    def _change_visibility(self, item: InFlight, seconds: int, why: str) -> str:
        """Returns "ok", "lost" (the handle is no longer valid) or "failed" (try again)."""
        seconds = max(0, min(seconds, MAX_VISIBILITY))
        try:
            self.sqs.change_message_visibility(
                QueueUrl=self.settings.queue_url,
                ReceiptHandle=item.receipt_handle,
                VisibilityTimeout=seconds,
            )
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            log.warning(
                "message.visibility_failed",
                message_id=item.message_id,
                why=why,
                error=str(exc),
                code=error_code(exc),
            )
            return "lost" if lost_handle(error_code(exc)) else "failed"
        log.debug("message.visibility", message_id=item.message_id, seconds=seconds, why=why)
        return "ok"

    # -- heartbeat -------------------------------------------------------------------

    def _heartbeat_loop(self) -> None:
        timeout = self.settings.visibility_timeout
        interval = max(0.5, min(10.0, timeout / 10))
        while not self._stopped.wait(interval):
            for item in self._due_for_extension(timeout):
                self._extend(item, timeout)

    def _due_for_extension(self, timeout: int) -> list[InFlight]:
        now = self.clock()
        with self._lock:
            return [
                item
                for item in self._in_flight.values()
                if item.extendable and now - item.extended_at >= timeout / 2
            ]

    def _extend(self, item: InFlight, timeout: int) -> None:
        held_for = self.clock() - item.received_at
        allowed = int(MAX_VISIBILITY - held_for - 60)
        seconds = min(timeout, allowed)
        if seconds <= 0:
            item.extendable = False
            log.warning("message.visibility_cap_reached", message_id=item.message_id)
            return
        status = self._change_visibility(item, seconds, "extend")
        if status == "ok":
            item.extended_at = self.clock()
        elif status == "lost":
            item.extendable = False


_NO_ROOM = (errno.ENOSPC, errno.EDQUOT)
_REFUSED = (errno.EROFS, errno.EIO)  # a filesystem remounted read-only, a failing device


def _volume_errno(exc: BaseException) -> int | None:
    """The errno of the first OSError in `exc`'s chain that says the volume is out of room
    or refuses writes, else None (the journal's append raises it unconverted; a wrapper
    keeps it as its cause)."""
    seen: BaseException | None = exc
    for _ in range(8):  # a chain is short; a cycle must not loop
        if seen is None:
            return None
        if isinstance(seen, OSError) and seen.errno in _NO_ROOM + _REFUSED:
            return seen.errno
        # the explicit cause, or the exception being handled unless `from None` hid it
        seen = seen.__cause__ or (None if seen.__suppress_context__ else seen.__context__)
    return None


def _is_volume_failure(exc: Exception) -> bool:
    """No volume, no room on it, or a write it refused: DiskFull, VolumeNotReady, or an
    ENOSPC, EDQUOT, EROFS or EIO that reached here unconverted."""
    return isinstance(exc, DiskFull | VolumeNotReady) or _volume_errno(exc) is not None


def _write_refused(exc: Exception) -> bool:
    """The volume refused a write (EROFS, EIO) rather than lacking room or being absent."""
    return not isinstance(exc, DiskFull | VolumeNotReady) and _volume_errno(exc) in _REFUSED


def _retryable_failure(event: ObjectEvent, exc: Exception, *, paused: bool = False) -> None:
    """The `backup.failed` warning of a failure that is retried (the message comes back):
    a retry, or a write the volume refused for want of room (`paused`: the consumer pauses)."""
    extra = {"paused": True} if paused else {}
    log.warning(
        "backup.failed",
        bucket=event.bucket,
        key=event.key,
        error=str(exc),
        error_type=type(exc).__name__,
        retryable=True,
        **extra,
    )
