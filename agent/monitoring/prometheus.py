"""A Prometheus endpoint (prometheus-client) with the agent's figures.

Counters and gauges are read from `Stats` and the other sources at scrape time, so the
endpoint and CloudWatch always agree; histograms are fed per backup. Everything lives in
the agent's own `CollectorRegistry` (never the process-global one), so tests can run
several agents in one process.

Conventions (https://prometheus.io/docs/practices/naming/, .../instrumentation/): base units
and ratios 0..1 (`disk_used_ratio`, never a percentage); times as Unix timestamps
(`last_success_timestamp_seconds`), not "seconds since", so the alert does the subtraction;
every counter is present from the first scrape, at 0 for each label value known in advance
(outcomes, reasons, jobs, alert kinds), so `rate()` and `increase()` see the first
increment; no `_created` series (`disable_created_metrics`); a `build_info` gauge with the
version; the standard `process_*` metrics.

The endpoint faces whoever can reach its port, so it is served by `_BoundedServer`, not
prometheus-client's thread-per-connection server: at most `MAX_CONNECTIONS` connections
(one thread each), each cut `CONNECTION_TIMEOUT_SECONDS` after it was accepted whatever it
is doing. When every slot is taken, the connection that has waited longest without sending
a whole request is cut to make room (idle sockets cannot lock a scrape out); when every
slot is serving a request, the newcomer is closed at once.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

import structlog
from prometheus_client import (
    CollectorRegistry,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    make_wsgi_app,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from agent import __version__
from agent.monitoring.alerts import AlertKind
from agent.monitoring.metrics import DiskUsageReader
from agent.pipeline.backup import ARCHIVED, SSE_C, Outcome
from agent.scheduler import JobRecord
from agent.stats import RECORDS_REJECTED, Stats
from agent.storage.grow import GrowState

log = structlog.get_logger("agent.prometheus")

PREFIX = "backup_agent"
GROW_STATES = tuple(state.value for state in GrowState)
LAG_BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 24 * 3600)
DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)
SIZE_BUCKETS = tuple(float(1 << n) for n in range(10, 37, 3))  # 1 KiB … 64 GiB
MAX_CONNECTIONS = 8  # at once, a thread each: Prometheus scrapes one at a time
CONNECTION_TIMEOUT_SECONDS = 10.0  # from accept to close, whatever the client does
_SLOT_WAIT_SECONDS = 0.5  # for a cut connection's thread to give its slot back

# Label values known in advance: their counters are exported at 0 from the start.
# (COMMITTING is no outcome of its own: Monitoring.observe counts the result it resolves to)
OUTCOMES = tuple(outcome.value for outcome in Outcome if outcome is not Outcome.COMMITTING)
ARCHIVED_REASONS = (ARCHIVED, SSE_C)
TAG_RESULTS = ("read", "denied", "missing", "failed")  # agent/pipeline/backup.py, _tags
ALERT_KINDS = tuple(kind.value for kind in AlertKind)

# One process, one exposition: a `_created` sample per counter and histogram doubles the
# series and means nothing to an alert (prometheus-client's switch is process-wide).
disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped in prometheus-client


@dataclass
class Sources:
    """Where scrape-time figures come from; each callable is cheap and never blocks."""

    stats: Stats
    root: Path | None = None
    disk: DiskUsageReader | None = None
    workers: Callable[[], int] = lambda: 0
    workers_busy: Callable[[], int] = lambda: 0
    jobs: Callable[[], list[JobRecord]] = list
    counters: Callable[[], Mapping[str, int]] = dict
    alerts_sent: Callable[[], Mapping[str, int]] = dict
    alerts_suppressed: Callable[[], Mapping[str, int]] = dict
    clock: Callable[[], float] = time.time
    days_until_full: Callable[[], float | None] = lambda: None
    volume_grow: Callable[[], str | None] = lambda: None  # GrowState's value; None: auto-grow off


class _ScrapeCollector(Collector):
    def __init__(self, sources: Sources) -> None:
        self.sources = sources

    def collect(self) -> Iterator[Metric]:
        src = self.sources
        stats = src.stats.snapshot()
        yield _by_label(
            "backups_succeeded",
            "Objects backed up, by outcome.",
            "outcome",
            stats.outcomes,
            OUTCOMES,
        )
        yield _by_label(
            "backups_failed",
            "Failed backup attempts, by error type (a series appears at its first failure).",
            "reason",
            stats.failures,
        )
        yield CounterMetricFamily(
            f"{PREFIX}_bytes_backed_up", "Object bytes backed up.", value=stats.bytes_backed_up
        )
        yield CounterMetricFamily(
            f"{PREFIX}_bytes_stored",
            "Compressed bytes newly written to the volume.",
            value=stats.bytes_stored,
        )
        yield _by_label(
            "events_ignored",
            "Event records ignored on purpose (tagging, ACL, test event, ...), by event name.",
            "event",
            stats.ignored,
        )
        yield _by_label(
            "objects_archived",
            "Versions found that S3 will not serve (archived, SSE-C): not backed up, by reason.",
            "reason",
            stats.archived,
            ARCHIVED_REASONS,
        )
        yield _by_label(
            "tag_requests",
            "GetObjectTagging requests (storage.record_tags: one per version), by result.",
            "result",
            stats.tag_requests,
            TAG_RESULTS,
        )
        extra = src.counters()
        yield CounterMetricFamily(
            f"{PREFIX}_backups_gave_up",
            "Messages given up on after the last retry.",
            value=extra.get("BackupsGaveUp", 0),
        )
        build = GaugeMetricFamily(
            f"{PREFIX}_build_info",
            "Always 1; the agent's version in the label.",
            labels=["version"],
        )
        build.add_metric([__version__], 1)
        yield build
        yield GaugeMetricFamily(
            f"{PREFIX}_start_time_seconds",
            "When the agent started (Unix time).",
            value=stats.started_at,
        )
        if stats.last_success_at is not None:
            yield GaugeMetricFamily(
                f"{PREFIX}_last_success_timestamp_seconds",
                "When an object was last backed up (Unix time); absent until the first one.",
                value=stats.last_success_at,
            )
        yield GaugeMetricFamily(
            f"{PREFIX}_messages_in_flight",
            "SQS messages being worked on.",
            value=stats.messages_in_flight,
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_paused",
            "1 while the consumer is paused (no volume, or no room on it); the reason is in"
            " the systemd STATUS= line and the consumer.paused log event.",
            value=1 if stats.paused_reason is not None else 0,
        )
        yield CounterMetricFamily(
            f"{PREFIX}_messages_held_back",
            "Messages held back because their object did not fit the room left.",
            value=stats.held_back,
        )
        yield CounterMetricFamily(
            f"{PREFIX}_records_rejected",
            "Journal lines and ledger items skipped as invalid (each counted once; logged as"
            " record.rejected).",
            value=stats.lifecycle[RECORDS_REJECTED],
        )
        yield GaugeMetricFamily(f"{PREFIX}_workers", "Configured workers.", value=src.workers())
        yield GaugeMetricFamily(
            f"{PREFIX}_workers_busy", "Workers busy with a message.", value=src.workers_busy()
        )
        yield from self._disk()
        yield from self._volume_grow()
        yield from self._jobs()
        yield from self._alerts()

    def _disk(self) -> Iterator[Metric]:
        src = self.sources
        if src.disk is None or src.root is None:
            return
        try:
            usage = src.disk(src.root)
        except OSError:
            return
        yield GaugeMetricFamily(
            f"{PREFIX}_disk_used_ratio",
            "Used space of the backup volume, 0 to 1 (as df shows it).",
            # used / (used + available), as df's Use%, unrounded (psutil's percent has 1 decimal)
            value=usage.used / (usage.used + usage.free) if usage.used + usage.free else 0.0,
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_disk_free_bytes", "Free bytes on the backup volume.", value=usage.free
        )
        days = src.days_until_full()
        if days is not None:
            yield GaugeMetricFamily(
                f"{PREFIX}_days_until_full",
                "Days until the volume reaches its free-space floor at the recent growth rate.",
                value=days,
            )

    def _volume_grow(self) -> Iterator[Metric]:
        """Apart from the disk figures: an unreadable volume must not hide a grow under way."""
        grow = self.sources.volume_grow()
        if grow is None:
            return
        state = GaugeMetricFamily(
            f"{PREFIX}_volume_grow_state",
            "storage.auto_grow: 1 for the state the grower is in, 0 for the others.",
            labels=["state"],
        )
        for name in GROW_STATES:
            state.add_metric([name], 1.0 if name == grow else 0.0)
        yield state

    def _jobs(self) -> Iterator[Metric]:
        runs = CounterMetricFamily(f"{PREFIX}_job_runs", "Scheduled job runs.", labels=["job"])
        failures = CounterMetricFamily(
            f"{PREFIX}_job_failures", "Scheduled job runs that failed.", labels=["job"]
        )
        duration = GaugeMetricFamily(
            f"{PREFIX}_job_last_duration_seconds", "Duration of the last run.", labels=["job"]
        )
        succeeded = GaugeMetricFamily(
            f"{PREFIX}_job_last_success_timestamp_seconds",
            "When the job last ran without failing (Unix time); absent until then.",
            labels=["job"],
        )
        for record in self.sources.jobs():
            runs.add_metric([record.name], record.runs)
            failures.add_metric([record.name], record.failures)
            if record.last_duration is not None:
                duration.add_metric([record.name], record.last_duration)
            if record.last_success_at is not None:
                succeeded.add_metric([record.name], record.last_success_at)
        yield runs
        yield failures
        yield duration
        yield succeeded

    def _alerts(self) -> Iterator[Metric]:
        yield _by_label(
            "alerts_sent", "Alerts delivered.", "kind", self.sources.alerts_sent(), ALERT_KINDS
        )
        yield _by_label(
            "alerts_suppressed",
            "Alerts folded into a summary by rate limiting.",
            "kind",
            self.sources.alerts_suppressed(),
            ALERT_KINDS,
        )


@dataclass
class _Connection:
    sock: socket.socket
    deadline: float
    accepted: float
    waiting: bool = True  # no whole request yet: the one to cut when the slots are full
    cut: bool = False


class _Handler(WSGIRequestHandler):
    """One request per connection; logs nothing (a scrape is not news)."""

    def parse_request(self) -> bool:
        parsed = super().parse_request()
        if parsed:
            server: _BoundedServer = self.server  # type: ignore[assignment]
            server.request_read(self.connection)
        return parsed

    def log_message(self, format: str, *args: Any) -> None:
        """Nothing."""


class _BoundedServer(WSGIServer):
    """A WSGI server with a connection cap and a per-connection deadline (see the module)."""

    request_queue_size = 128  # the listen backlog: a burst waits there, not in SYN retries

    def __init__(
        self,
        address: tuple[str, int],
        family: socket.AddressFamily,
        max_connections: int,
        timeout: float,
    ) -> None:
        self.address_family = family
        self.max_connections = max_connections
        self.connection_timeout = timeout
        self._slots = threading.BoundedSemaphore(max_connections)
        self._lock = threading.Lock()
        self._connections: dict[socket.socket, _Connection] = {}
        self.refused = 0
        self.cut = 0
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._take_slot():
            self.refused += 1
            log.debug("prometheus.connection_refused", client=str(client_address))
            self.shutdown_request(request)
            return
        now = time.monotonic()
        request.settimeout(self.connection_timeout)
        with self._lock:
            self._connections[request] = _Connection(
                request, now + self.connection_timeout, accepted=now
            )
        thread = threading.Thread(
            target=self._serve_one, args=(request, client_address), daemon=True
        )
        try:
            thread.start()
        except RuntimeError:  # no thread to be had (TasksMax): refuse, never crash the server
            self._forget(request)

    def _take_slot(self) -> bool:
        """A free slot, or the slot of the oldest connection still waiting to send a request."""
        if self._slots.acquire(blocking=False):
            return True
        return self._cut_oldest_waiting() and self._slots.acquire(timeout=_SLOT_WAIT_SECONDS)

    def _serve_one(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception as exc:  # noqa: BLE001 - a client's timeout or reset is not ours
            log.debug("prometheus.connection_ended", client=str(client_address), error=str(exc))
        finally:
            self._forget(request)

    def _forget(self, request: Any) -> None:
        """Untracked first (nothing cuts a closed socket), then closed, then the slot freed."""
        with self._lock:
            self._connections.pop(request, None)
        self.shutdown_request(request)
        self._slots.release()

    def request_read(self, sock: socket.socket) -> None:
        with self._lock:
            if sock in self._connections:
                self._connections[sock].waiting = False

    def _cut_oldest_waiting(self) -> bool:
        with self._lock:
            waiting = [c for c in self._connections.values() if c.waiting and not c.cut]
            if not waiting:
                return False
            self._cut(min(waiting, key=lambda c: c.accepted))
        return True

    def service_actions(self) -> None:
        """Every poll of serve_forever (0.5 s): cut connections past their deadline."""
        now = time.monotonic()
        with self._lock:
            for connection in list(self._connections.values()):
                if connection.deadline <= now and not connection.cut:
                    self._cut(connection)

    def server_close(self) -> None:
        super().server_close()
        with self._lock:
            for connection in list(self._connections.values()):
                self._cut(connection)

    def _cut(self, connection: _Connection) -> None:
        """Wake the thread blocked on the socket (its read returns EOF); that thread closes
        it. Called under the lock, so never on a socket `_forget` has closed."""
        connection.cut = True
        self.cut += 1
        with contextlib.suppress(OSError):  # the client is gone already
            connection.sock.shutdown(socket.SHUT_RDWR)


def start_bounded_server(
    host: str,
    port: int,
    registry: CollectorRegistry,
    *,
    max_connections: int,
    timeout: float,
) -> tuple[_BoundedServer, threading.Thread]:
    family, _, _, _, sockaddr = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    server = _BoundedServer((str(sockaddr[0]), port), family, max_connections, timeout)
    server.set_app(make_wsgi_app(registry))
    thread = threading.Thread(target=server.serve_forever, name="prometheus", daemon=True)
    thread.start()
    return server, thread


class PrometheusMetrics:
    """The agent's registry: scrape-time figures plus histograms and queue gauges."""

    def __init__(self, sources: Sources, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.registry.register(_ScrapeCollector(sources))
        ProcessCollector(registry=self.registry)  # process_cpu_seconds_total, ..._memory_bytes
        self.lag = Histogram(
            f"{PREFIX}_backup_lag_seconds",
            "S3 event time to durable copy.",
            buckets=LAG_BUCKETS,
            registry=self.registry,
        )
        self.duration = Histogram(
            f"{PREFIX}_backup_duration_seconds",
            "Time to back up one object.",
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.object_bytes = Histogram(
            f"{PREFIX}_object_bytes",
            "Size of objects backed up.",
            buckets=SIZE_BUCKETS,
            registry=self.registry,
        )
        self.queue_messages = Gauge(
            f"{PREFIX}_queue_messages",
            "Messages in the SQS queues (ApproximateNumberOfMessages*), by queue and state.",
            ["queue", "state"],
            registry=self.registry,
        )
        self._server: Any = None
        self._thread: Any = None

    def serve(self, address: str) -> int | None:
        """Listen on HOST:PORT (port 0 picks one); returns the port, None if it is taken."""
        host, _, port = address.rpartition(":")
        host = host.strip("[]")
        try:
            self._server, self._thread = start_bounded_server(
                host,
                int(port),
                self.registry,
                max_connections=MAX_CONNECTIONS,
                timeout=CONNECTION_TIMEOUT_SECONDS,
            )
        except OSError as exc:
            # A busy port must not stop backups: report it and run without the endpoint.
            log.error("prometheus.listen_failed", address=address, error=str(exc))
            return None
        bound = int(self._server.server_address[1])
        log.info("prometheus.listening", address=f"{host}:{bound}")
        return bound

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def _by_label(
    name: str,
    documentation: str,
    label: str,
    counts: Mapping[str, int],
    known: tuple[str, ...] = (),
) -> Metric:
    """One counter with a sample per `label` value: each `known` value (at 0 until counted),
    then any other value counted."""
    family = CounterMetricFamily(f"{PREFIX}_{name}", documentation, labels=[label])
    for value in sorted({*known, *counts}):
        family.add_metric([value], counts.get(value, 0))
    return family
