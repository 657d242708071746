"""Alerts deduplicated, rate-limited and delivered off the backup path.

`AlertDispatcher.submit(alert)` takes a lock, updates a counter and returns: it never
waits for the network. Per alert kind, the first alert of a quiet period is sent at once;
what follows within `window_seconds` is folded into one summary sent when the window ends,
carrying the count and a few distinct examples. A storm of 10,000 failures therefore
yields one alert, then one summary per window while the storm lasts. Delivery (render,
then each channel) runs on the dispatcher's own thread; what a channel fails to take is
retried, what it refuses for good is dropped.

Retries back off per channel: `retry_seconds` after its first failure, doubling with each
failure in a row up to `max_retry_seconds`, and never sooner than the channel asked (a
webhook's 429 ``Retry-After``). A new notice is still tried at once (it is the probe that
finds a channel back), except while the channel's own Retry-After runs: then it waits with
the rest. The first success ends the hold.
"""

from __future__ import annotations

import collections
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import structlog

from agent.aws import classify, error_code
from agent.errors import PermanentError
from agent.monitoring.alerts import Alert, AlertKind, Notice
from agent.monitoring.channels import Channel, render

log = structlog.get_logger("agent.alerts")


@dataclass
class _Pending:
    count: int = 0
    examples: dict[str, Alert] = field(default_factory=dict)
    first_at: float = 0.0
    last_at: float = 0.0


class AlertWindow:
    """Per kind: send the first alert of a quiet window, fold the rest into one summary."""

    def __init__(self, window_seconds: float = 300.0, max_examples: int = 5) -> None:
        self.window = window_seconds
        self.max_examples = max_examples
        self._last_sent: dict[AlertKind, float] = {}
        self._pending: dict[AlertKind, _Pending] = {}
        self.suppressed: Counter[str] = Counter()

    def offer(self, alert: Alert, now: float) -> Notice | None:
        """A notice to send now, or None when the alert was folded into a pending summary."""
        last = self._last_sent.get(alert.kind)
        if alert.kind not in self._pending and (last is None or now - last >= self.window):
            self._last_sent[alert.kind] = now
            return Notice(alert.kind, 1, (alert,), alert.at, alert.at)
        pending = self._pending.setdefault(alert.kind, _Pending(first_at=alert.at))
        pending.count += 1
        pending.last_at = alert.at
        if alert.key not in pending.examples and len(pending.examples) < self.max_examples:
            pending.examples[alert.key] = alert
        self.suppressed[alert.kind.value] += 1
        return None

    def due(self, now: float, *, flush: bool = False) -> list[Notice]:
        """Summaries whose window has ended (all of them with `flush`)."""
        notices = []
        for kind in list(self._pending):
            if not flush and now - self._last_sent.get(kind, 0.0) < self.window:
                continue
            pending = self._pending.pop(kind)
            self._last_sent[kind] = now
            notices.append(
                Notice(
                    kind,
                    pending.count,
                    tuple(pending.examples.values()),
                    pending.first_at,
                    pending.last_at,
                    is_summary=True,
                )
            )
        return notices


class AlertDispatcher:
    """Rate-limits alerts on the caller's thread (cheap) and delivers on its own thread."""

    def __init__(
        self,
        channels: Sequence[Channel],
        *,
        context: Mapping[str, str] | None = None,
        window_seconds: float = 300.0,
        max_examples: int = 5,
        clock: Callable[[], float] = time.time,
        tick_seconds: float = 1.0,
        retry_seconds: float = 30.0,
        max_retry_seconds: float = 900.0,
        max_unsent: int = 100,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.channels = list(channels)
        self.context = dict(context or {})
        self.limiter = AlertWindow(window_seconds, max_examples)
        self.clock = clock
        self.tick = tick_seconds
        self.sent: Counter[str] = Counter()
        self.delivery_failures: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._outbox: queue.Queue[Notice | None] = queue.Queue()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing: set[str] = set()
        # notices a channel failed to deliver, retried every `retry_seconds` until it answers
        self.retry_seconds = retry_seconds
        self.max_retry_seconds = max(retry_seconds, max_retry_seconds)
        self._monotonic = monotonic
        self._unsent: collections.deque[tuple[Notice, Channel]] = collections.deque(
            maxlen=max_unsent
        )
        self._held_until: dict[str, float] = {}  # channel name -> not before (monotonic)
        self._asked_until: dict[str, float] = {}  # the same, when the channel asked for it
        self._failures_in_a_row: Counter[str] = Counter()
        self.dropped = 0

    @property
    def enabled(self) -> bool:
        return bool(self.channels)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="alerts", daemon=True)
            self._thread.start()

    def submit(self, alert: Alert) -> None:
        """Never blocks on the network; safe from any thread."""
        if not self.channels:
            return
        with self._lock:
            notice = self.limiter.offer(alert, self.clock())
        if notice is not None:
            self._outbox.put(notice)

    def send_now(self, notice: Notice) -> None:
        """Queue a notice past the alert window (the daily digest)."""
        if self.channels:
            self._outbox.put(notice)

    def sent_counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self.sent)

    def suppressed(self) -> dict[str, int]:
        with self._lock:
            return dict(self.limiter.suppressed)

    def stop(self, timeout: float = 10.0) -> None:
        """Send pending summaries, then stop the delivery thread (waiting up to `timeout`)."""
        with self._lock:
            for notice in self.limiter.due(self.clock(), flush=True):
                self._outbox.put(notice)
        self._stopping.set()
        self._outbox.put(None)
        if self._thread is None:
            self._drain()  # never started: deliver on the caller's thread
            return
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("alert.stop_timed_out", unsent=self._outbox.qsize())
        self._thread = None

    def _loop(self) -> None:
        while True:
            try:
                notice = self._outbox.get(timeout=self.tick)
            except queue.Empty:
                notice = None
                if self._stopping.is_set():
                    return
            if notice is not None:
                self._deliver(notice)
            elif self._stopping.is_set() and self._outbox.empty():
                self._retry_unsent(force=True)
                return
            with self._lock:
                due = self.limiter.due(self.clock())
            for summary in due:
                self._deliver(summary)
            self._retry_unsent()

    def _drain(self) -> None:
        while True:
            try:
                notice = self._outbox.get_nowait()
            except queue.Empty:
                self._retry_unsent(force=True)
                return
            if notice is not None:
                self._deliver(notice)

    def _retry_unsent(self, *, force: bool = False) -> None:
        """Deliver again what a channel failed to take, once its hold has passed (all of
        it with `force`: at stop). A channel that fails again keeps the rest for later."""
        if not self._unsent:
            return
        now = self._monotonic()
        waiting = list(self._unsent)
        self._unsent.clear()
        for notice, channel in waiting:
            if force or now >= self._held_until.get(channel.name, 0.0):
                self._deliver(notice, only=channel, retrying=True)
                now = self._monotonic()
            else:
                self._unsent.append((notice, channel))

    def _hold(self, channel: Channel, exc: BaseException) -> float:
        """Hold `channel` back: the backoff of its failures in a row, or what it asked for."""
        self._failures_in_a_row[channel.name] += 1
        step = self._failures_in_a_row[channel.name] - 1
        backoff = min(self.max_retry_seconds, self.retry_seconds * 2 ** min(step, 30))
        asked = getattr(exc, "retry_after", None)
        wanted = float(asked) if isinstance(asked, int | float) else 0.0
        seconds: float = min(max(backoff, wanted), max(self.max_retry_seconds, 3600.0))
        self._held_until[channel.name] = self._monotonic() + seconds
        if wanted:
            self._asked_until[channel.name] = self._monotonic() + wanted
        return seconds

    def _asked_to_wait(self, channel: Channel) -> bool:
        return self._monotonic() < self._asked_until.get(channel.name, 0.0)

    def _keep_for_retry(self, notice: Notice, channel: Channel) -> None:
        if len(self._unsent) == self._unsent.maxlen:  # the oldest goes
            self.dropped += 1
            log.warning("alert.unsent_dropped", channel=channel.name, dropped=self.dropped)
        self._unsent.append((notice, channel))

    def _deliver(
        self, notice: Notice, only: Channel | None = None, *, retrying: bool = False
    ) -> None:
        message = render(notice, self.context)
        for channel in self.channels if only is None else [only]:
            if not channel.wants(notice.kind):
                continue
            if not retrying and self._asked_to_wait(channel):
                self._keep_for_retry(notice, channel)  # behind the ones already waiting
                continue
            try:
                channel.send(notice, message)
            except Exception as exc:  # noqa: BLE001 - the delivery thread must outlive any failure
                self.delivery_failures[channel.name] += 1
                if isinstance(classify(exc, channel.name), PermanentError):
                    # AccessDenied, an unverified sender...: retrying every round cannot help
                    self.dropped += 1
                    log.error(
                        "alert.unsent_dropped",
                        channel=channel.name,
                        kind=notice.kind.value,
                        reason="permanent",
                        code=error_code(exc),
                    )
                else:
                    self._keep_for_retry(notice, channel)
                    held = self._hold(channel, exc)
                    log.info("alert.retry_later", channel=channel.name, seconds=round(held, 1))
                if channel.name not in self._failing:
                    self._failing.add(channel.name)
                    log.error(
                        "alert.delivery_failed",
                        channel=channel.name,
                        kind=notice.kind.value,
                        subject=message.subject,
                        error=str(exc),
                        code=error_code(exc),
                    )
                continue
            self._failures_in_a_row.pop(channel.name, None)
            self._held_until.pop(channel.name, None)
            self._asked_until.pop(channel.name, None)
            if channel.name in self._failing:
                self._failing.discard(channel.name)
                log.info("alert.delivery_recovered", channel=channel.name)
            with self._lock:
                self.sent[notice.kind.value] += 1
            log.info(
                "alert.sent",
                channel=channel.name,
                kind=notice.kind.value,
                count=notice.count,
                subject=message.subject,
            )
