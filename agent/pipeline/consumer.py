"""The SQS consumer: long-poll, fan out to workers, keep messages invisible while they
run, delete only after every record is durable and recorded.

Kept whole: one class whose threads share one in-flight table under one lock.

Lifecycle: `start()`, then `stop(timeout)`: stop receiving → give back messages no worker
has started → let in-flight work finish until the deadline → make what is unfinished
visible again → return.
Threads: one receiver, N workers, one heartbeat (visibility extension), one that deletes
finished messages in batches (agent/pipeline/deletes.py).
"""

from __future__ import annotations

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
from agent.errors import MalformedMessage, PermanentError
from agent.events import IgnoredEvent, ObjectEvent, ParsedMessage, parse_message
from agent.pipeline.backup import Outcome, Processor
from agent.pipeline.deletes import DeleteBatcher
from agent.pipeline.delivery import Delivery, delivering
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
        self._work: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._in_flight: dict[str, InFlight] = {}
        self._lock = threading.Condition()
        self._receiving = threading.Event()
        self._stopped = threading.Event()
        self._threads: list[threading.Thread] = []
        self._workers: list[threading.Thread] = []
        self._receive_failures = 0
        self._deletes = DeleteBatcher(sqs, settings.queue_url)

    # -- start and stop --------------------------------------------------------------

    def start(self) -> None:
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
        waiting = self._take_waiting()
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

    def is_idle(self) -> bool:
        with self._lock:
            return not self._in_flight and self._work.empty()

    def _spawn(self, target: Callable[[], None], name: str) -> threading.Thread:
        thread = threading.Thread(target=target, name=f"consumer-{name}", daemon=True)
        thread.start()
        self._threads.append(thread)
        return thread

    def _ensure_workers(self, count: int) -> None:
        while len(self._workers) < count:
            self._workers.append(self._spawn(self._work_loop, f"worker-{len(self._workers)}"))

    # -- receiving -------------------------------------------------------------------

    def _receive_loop(self) -> None:
        while self._receiving.is_set():
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
        """How many messages to receive next (0: stopping); waits until there is room."""
        with self._lock:
            self._lock.wait_for(
                lambda: not self._receiving.is_set() or self._room() > 0, timeout=1.0
            )
            if not self._receiving.is_set():
                return 0
            return min(self.settings.max_messages, self._room())

    def _room(self) -> int:
        """One message per free worker; with `receive_ahead`, once every received message
        has been picked up, a further batch that waits in flight (kept invisible by the
        heartbeat) so that receives stay full and a worker finds its next message ready."""
        if not self._receive_ahead:
            return self._capacity - len(self._in_flight)
        if not self._work.empty():
            return 0
        return self._capacity + self.settings.max_messages - len(self._in_flight)

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
        with self._lock:
            self._in_flight[item.receipt_handle] = item
            self.stats.set_in_flight(len(self._in_flight))
        self._work.put(message)

    # -- working ---------------------------------------------------------------------

    def _work_loop(self) -> None:
        while True:
            message = self._work.get()
            if message is None:
                return
            with self._lock:
                self._lock.notify_all()  # with receive_ahead, the next batch may come now
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
        self._settle(message, failures)

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
        finally:
            if held:
                self.budget.release(held)
        return failures

    def _process_one(self, event: ObjectEvent, failures: _Failures) -> None:
        try:
            result = self.process(event)
        except PermanentError as exc:
            failures.permanent.append(f"{event.key}: {exc}")
            self.stats.record_failure(type(exc).__name__)
            log.error(
                "backup.failed", bucket=event.bucket, key=event.key, error=str(exc), retryable=False
            )
            return
        except Exception as exc:  # noqa: BLE001 - everything else is retried, never dropped
            failures.retryable.append(f"{event.key}: {exc}")
            self.stats.record_failure(type(exc).__name__)
            log.warning(
                "backup.failed",
                bucket=event.bucket,
                key=event.key,
                error=str(exc),
                error_type=type(exc).__name__,
                retryable=True,
            )
            return
        if result.outcome is Outcome.ARCHIVED:
            return  # not a backup; BackupService counts the versions found unreadable
        lag = max(0.0, self.wall_clock() - event.event_time.timestamp())
        size = result.copy.size if result.copy else 0
        stored = result.copy.stored_size if result.copy and not result.copy.deduplicated else 0
        self.stats.record_success(result.outcome.value, size, stored, lag)

    def _settle(self, message: dict[str, Any], failures: _Failures) -> None:
        if not failures.retryable and not failures.permanent:
            self._finish(message, delete=True)
            return
        item = self._lookup(message)
        count = item.receive_count if item else 1
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

    def retry_delay(self, receive_count: int) -> float:
        base = self.settings.retry_base_seconds * 2 ** max(0, receive_count - 1)
        capped = min(self.settings.retry_max_seconds, base)
        return float(capped * random.uniform(0.8, 1.2))  # noqa: S311 - jitter, not crypto

    def _lookup(self, message: dict[str, Any]) -> InFlight | None:
        with self._lock:
            return self._in_flight.get(message["ReceiptHandle"])

    def _finish(
        self, message: dict[str, Any], *, delete: bool = False, release_after: float | None = None
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
            self._change_visibility(item, int(release_after), "released_for_retry")
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
