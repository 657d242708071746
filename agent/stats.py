"""Thread-safe running figures of the agent, read by metrics, STATUS= and the digest."""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field

# Records the journal and ledger readers skipped (agent/records.py `Rejections`): counted by
# the daemon's wiring, exported as `RecordsRejected` and `backup_agent_records_rejected_total`.
RECORDS_REJECTED = "records.rejected"


@dataclass
class Stats:
    started_at: float = field(default_factory=time.time)
    backups_succeeded: int = 0
    backups_failed: int = 0
    bytes_backed_up: int = 0
    bytes_stored: int = 0
    last_success_at: float | None = None
    last_lag_seconds: float | None = None
    messages_in_flight: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)
    lifecycle: Counter[str] = field(default_factory=Counter)  # "reconcile.listed", "gc.bytes_freed"
    ignored: Counter[str] = field(default_factory=Counter)  # event name → records ignored
    archived: Counter[str] = field(default_factory=Counter)  # "archived", "sse-c" → versions
    paused_reason: str | None = None  # why the consumer stopped receiving (low space, no volume)
    paused_since: float | None = None
    held_back: int = 0  # messages given back for later: their object did not fit the space left
    tag_requests: Counter[str] = field(default_factory=Counter)  # GetObjectTagging, by result
    categories: Counter[str] = field(default_factory=Counter)  # category → versions backed up
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record_success(
        self, outcome: str, size: int, stored: int, lag: float | None, now: float | None = None
    ) -> None:
        with self._lock:
            self.outcomes[outcome] += 1
            self.backups_succeeded += 1
            self.bytes_backed_up += size
            self.bytes_stored += stored
            self.last_success_at = now if now is not None else time.time()
            if lag is not None:
                self.last_lag_seconds = lag

    def record_category(self, name: str) -> None:
        """Count a version backed up in category `name` (agent/categories.py)."""
        with self._lock:
            self.categories[name] += 1

    def record_failure(self, reason: str) -> None:
        with self._lock:
            self.backups_failed += 1
            self.failures[reason] += 1

    def record_ignored(self, event_name: str) -> int:
        """Count a record ignored on purpose; returns how many of that name so far."""
        with self._lock:
            self.ignored[event_name] += 1
            return self.ignored[event_name]

    def record_archived(self, reason: str) -> None:
        """Count a version newly found that S3 holds but will not serve (archived, SSE-C)."""
        with self._lock:
            self.archived[reason] += 1

    def record_tag_request(self, result: str) -> None:
        """Count a GetObjectTagging request: read, denied, missing or failed."""
        with self._lock:
            self.tag_requests[result] += 1

    def count(self, name: str, amount: int = 1) -> None:
        """Add to a lifecycle counter (reconcile, retention, gc, scrub progress)."""
        with self._lock:
            self.lifecycle[name] += amount

    def set_in_flight(self, count: int) -> None:
        with self._lock:
            self.messages_in_flight = count

    def set_paused(self, reason: str | None, now: float | None = None) -> None:
        """The consumer paused (`reason`) or resumed (None)."""
        with self._lock:
            if reason is None:
                self.paused_reason, self.paused_since = None, None
            else:
                if self.paused_reason is None:
                    self.paused_since = now if now is not None else time.time()
                self.paused_reason = reason

    def record_held_back(self) -> None:
        with self._lock:
            self.held_back += 1

    def status_line(self) -> str:
        with self._lock:
            figures = (
                f"backed up {self.backups_succeeded}, failed {self.backups_failed},"
                f" in flight {self.messages_in_flight}"
            )
            if self.paused_reason is not None:
                return f"paused: {self.paused_reason}; {figures}"
            return figures

    def snapshot(self) -> Stats:
        """A consistent copy for readers on other threads (metrics, digest)."""
        with self._lock:
            return Stats(
                started_at=self.started_at,
                backups_succeeded=self.backups_succeeded,
                backups_failed=self.backups_failed,
                bytes_backed_up=self.bytes_backed_up,
                bytes_stored=self.bytes_stored,
                last_success_at=self.last_success_at,
                last_lag_seconds=self.last_lag_seconds,
                messages_in_flight=self.messages_in_flight,
                outcomes=Counter(self.outcomes),
                failures=Counter(self.failures),
                lifecycle=Counter(self.lifecycle),
                ignored=Counter(self.ignored),
                archived=Counter(self.archived),
                paused_reason=self.paused_reason,
                paused_since=self.paused_since,
                held_back=self.held_back,
                tag_requests=Counter(self.tag_requests),
                categories=Counter(self.categories),
            )
