"""A Prometheus endpoint (prometheus-client) with the agent's figures.

Counters and gauges are read from `Stats` and the other sources at scrape time, so the
endpoint and CloudWatch always agree; histograms are fed per backup. Everything lives in
the agent's own `CollectorRegistry` (never the process-global one), so tests can run
several agents in one process.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from agent.monitoring.metrics import DiskUsageReader
from agent.scheduler import JobRecord
from agent.stats import Stats

log = structlog.get_logger("agent.prometheus")

PREFIX = "backup_agent"
LAG_BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 24 * 3600)
DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)
SIZE_BUCKETS = tuple(float(1 << n) for n in range(10, 37, 3))  # 1 KiB … 64 GiB


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


class _ScrapeCollector(Collector):
    def __init__(self, sources: Sources) -> None:
        self.sources = sources

    def collect(self) -> Iterator[Metric]:
        src = self.sources
        stats = src.stats.snapshot()
        succeeded = CounterMetricFamily(
            f"{PREFIX}_backups_succeeded", "Objects backed up, by outcome.", labels=["outcome"]
        )
        for outcome, count in sorted(stats.outcomes.items()):
            succeeded.add_metric([outcome], count)
        yield succeeded
        failed = CounterMetricFamily(
            f"{PREFIX}_backups_failed", "Failed backup attempts, by error type.", labels=["reason"]
        )
        for reason, count in sorted(stats.failures.items()):
            failed.add_metric([reason], count)
        yield failed
        yield CounterMetricFamily(
            f"{PREFIX}_bytes_backed_up", "Object bytes backed up.", value=stats.bytes_backed_up
        )
        yield CounterMetricFamily(
            f"{PREFIX}_bytes_stored",
            "Compressed bytes newly written to the volume.",
            value=stats.bytes_stored,
        )
        extra = src.counters()
        yield CounterMetricFamily(
            f"{PREFIX}_backups_gave_up",
            "Messages given up on after the last retry.",
            value=extra.get("BackupsGaveUp", 0),
        )
        since = stats.last_success_at or stats.started_at
        yield GaugeMetricFamily(
            f"{PREFIX}_seconds_since_last_backup",
            "Seconds since the last successful backup (or the agent's start).",
            value=max(0.0, src.clock() - since),
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
        yield GaugeMetricFamily(f"{PREFIX}_workers", "Configured workers.", value=src.workers())
        yield GaugeMetricFamily(
            f"{PREFIX}_workers_busy", "Workers busy with a message.", value=src.workers_busy()
        )
        yield from self._disk()
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
            f"{PREFIX}_disk_used_percent", "Used space of the backup volume.", value=usage.percent
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

    def _jobs(self) -> Iterator[Metric]:
        runs = CounterMetricFamily(f"{PREFIX}_job_runs", "Scheduled job runs.", labels=["job"])
        failures = CounterMetricFamily(
            f"{PREFIX}_job_failures", "Scheduled job runs that failed.", labels=["job"]
        )
        duration = GaugeMetricFamily(
            f"{PREFIX}_job_last_duration_seconds", "Duration of the last run.", labels=["job"]
        )
        for record in self.sources.jobs():
            runs.add_metric([record.name], record.runs)
            failures.add_metric([record.name], record.failures)
            if record.last_duration is not None:
                duration.add_metric([record.name], record.last_duration)
        yield runs
        yield failures
        yield duration

    def _alerts(self) -> Iterator[Metric]:
        sent = CounterMetricFamily(f"{PREFIX}_alerts_sent", "Alerts delivered.", labels=["kind"])
        for kind, count in sorted(self.sources.alerts_sent().items()):
            sent.add_metric([kind], count)
        yield sent
        suppressed = CounterMetricFamily(
            f"{PREFIX}_alerts_suppressed",
            "Alerts folded into a summary by rate limiting.",
            labels=["kind"],
        )
        for kind, count in sorted(self.sources.alerts_suppressed().items()):
            suppressed.add_metric([kind], count)
        yield suppressed


class PrometheusMetrics:
    """The agent's registry: scrape-time figures plus histograms and queue gauges."""

    def __init__(self, sources: Sources, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.registry.register(_ScrapeCollector(sources))
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
            self._server, self._thread = start_http_server(
                int(port), addr=host, registry=self.registry
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
