"""Monitoring wired together for the daemon: jobs, CloudWatch, Prometheus, alerts.

Start order: alerts → Prometheus endpoint → scheduler (metrics, disk, queues, digest).
Stop order (after the consumer has drained): scheduler → last metrics sample and flush
(bounded) → pending alert summaries → endpoint closed.
"""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from agent.config import Config
from agent.errors import IntegrityError
from agent.events import ObjectEvent
from agent.monitoring.alerts import (
    Alert,
    AlertKind,
    Notice,
    agent_stopped,
    backup_gave_up,
    backups_paused,
    backups_resumed,
    config_rejected,
    held_back,
    integrity_failure,
    operational,
)
from agent.monitoring.channels import build_channels
from agent.monitoring.disk import DiskMonitor
from agent.monitoring.dispatcher import AlertDispatcher
from agent.monitoring.forecast import SpaceForecast
from agent.monitoring.metrics import (
    CloudWatchPublisher,
    DiskUsageReader,
    Observations,
    Sampler,
    disk_usage,
    resolve_dimensions,
)
from agent.monitoring.prometheus import PrometheusMetrics, Sources
from agent.pipeline.backup import Processor, Result
from agent.pipeline.pause import HeldBack, Verdict
from agent.scheduler import Jobs, cron, every
from agent.stats import Stats

log = structlog.get_logger("agent.monitoring")

FINAL_FLUSH_SECONDS = 10.0
ALERT_RETRY_SECONDS = 30.0

DEFAULT_SCHEDULES = {
    "metrics": every(60),
    "disk": every(60),
    "queues": every(60),
    "digest": cron("0 8 * * *"),
}


@dataclass
class Figures:
    """Digest figures over a period."""

    backups: int
    failures: int
    bytes_backed_up: int
    free_bytes: int | None
    used_percent: float | None


class Digest:
    """The daily digest email: what happened since the previous one."""

    def __init__(self, stats: Stats, root: Path, disk: DiskUsageReader) -> None:
        self.stats = stats
        self.root = root
        self.disk = disk
        self._since = time.time()
        self._previous = stats.snapshot()

    def notice(self, now: float) -> Notice:
        current = self.stats.snapshot()
        try:
            usage = self.disk(self.root)
            free, percent = usage.free, usage.percent
        except OSError:
            free, percent = None, None
        figures = Figures(
            current.backups_succeeded - self._previous.backups_succeeded,
            current.backups_failed - self._previous.backups_failed,
            current.bytes_backed_up - self._previous.bytes_backed_up,
            free,
            percent,
        )
        alert = Alert(
            AlertKind.DIGEST,
            key="digest",
            summary=(
                f"{figures.backups} backups, {figures.bytes_backed_up} bytes,"
                f" {figures.failures} failed attempts"
            ),
            details={
                "backups": str(figures.backups),
                "bytes_backed_up": str(figures.bytes_backed_up),
                "failed_attempts": str(figures.failures),
                "free_bytes": "unknown" if free is None else str(free),
                "used_percent": "unknown" if percent is None else f"{percent:.1f}",
                **{
                    f"category {name}": str(count)
                    for name, count in sorted(
                        (current.categories - self._previous.categories).items()
                    )
                },
            },
            at=now,
        )
        notice = Notice(AlertKind.DIGEST, 1, (alert,), self._since, now)
        self._previous, self._since = current, now
        return notice


class Monitoring:
    """Everything that watches the agent; the daemon calls start, stop and the hooks."""

    def __init__(
        self,
        config: Config,
        clients: Any,
        stats: Stats,
        *,
        workers: Callable[[], int] = lambda: 0,
        workers_busy: Callable[[], int] = lambda: 0,
        disk: DiskUsageReader = disk_usage,
        dimensions: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.time,
        forecast_history: Path | None = None,
        volume_grow: Callable[[], str | None] = lambda: None,
    ) -> None:
        self.config = config
        self.clients = clients
        self.stats = stats
        self.root = config.storage.root
        self.disk = disk
        self.clock = clock
        self.dimensions = dict(dimensions or resolve_dimensions(config))
        self.counters: Counter[str] = Counter()
        self._counter_lock = threading.Lock()
        self.observations = Observations()
        self.jobs = Jobs(config.schedules)
        context = {**self.dimensions, "host": socket.gethostname()}
        self.alerts = AlertDispatcher(
            build_channels(config.alerts, clients),
            context=context,
            window_seconds=config.alerts.window_seconds,
            max_examples=config.alerts.max_examples,
            # an undelivered alert is retried no later than the next summary would go out
            retry_seconds=min(ALERT_RETRY_SECONDS, config.alerts.window_seconds),
        )
        self.forecast = SpaceForecast(
            str(self.root),
            config.storage.min_free_bytes,
            threshold_days=config.alerts.days_until_full,
            alert=self.alerts.submit,
            clock=clock,
            history=forecast_history,  # a restart keeps DaysUntilFull
        )
        self.sampler = Sampler(
            stats,
            self.root,
            observations=self.observations,
            disk=disk,
            counters=self.totals,
            days_until_full=self.forecast.days_until_full,
            clock=clock,
        )
        self.publisher: CloudWatchPublisher | None = None
        if config.metrics.cloudwatch:
            self.publisher = CloudWatchPublisher(
                clients.cloudwatch(),
                config.metrics.namespace,
                self.dimensions,
                max_buffer=config.metrics.buffer_size,
            )
        self.prometheus = PrometheusMetrics(
            Sources(
                stats=stats,
                root=self.root,
                disk=disk,
                workers=workers,
                workers_busy=workers_busy,
                jobs=self.jobs.records,
                counters=self.totals,
                alerts_sent=self.alerts.sent_counts,
                alerts_suppressed=self.alerts.suppressed,
                clock=clock,
                days_until_full=self.forecast.days_until_full,
                volume_grow=volume_grow,
            )
        )
        self.prometheus_port: int | None = None
        self.disk_monitor = DiskMonitor(
            self.root,
            self.alerts.submit,
            threshold=config.alerts.disk_used_percent,
            margin=config.alerts.disk_recovery_margin,
            usage=disk,
        )
        self.digest = Digest(stats, self.root, disk)
        self._dead_letter_url: str | None = config.queue.dead_letter_url
        self._dead_letter_seen: int | None = None
        self._retention_seconds: float | None = None
        self._register_jobs()

    # -- start and stop --------------------------------------------------------------

    def start(self) -> None:
        self.alerts.start()
        if self.config.metrics.prometheus:
            self.prometheus_port = self.prometheus.serve(self.config.metrics.prometheus)
        self.jobs.start()
        log.info(
            "monitoring.started",
            dimensions=self.dimensions,
            cloudwatch=self.publisher is not None,
            alert_channels=[c.name for c in self.alerts.channels],
        )

    def stop(self) -> None:
        """After the consumer drained: last datapoints out, pending alerts sent."""
        self.jobs.stop(wait=False)  # a job stuck on a slow AWS call must not hold up exit
        self.forecast.save()
        if self.publisher is not None:
            self.publisher.add(self.sampler.sample())
            flusher = threading.Thread(
                target=self.publisher.flush,
                kwargs={"deadline": time.monotonic() + FINAL_FLUSH_SECONDS},
                name="metrics-final-flush",
                daemon=True,
            )
            flusher.start()
            flusher.join(FINAL_FLUSH_SECONDS + 1)
        self.alerts.stop(timeout=FINAL_FLUSH_SECONDS)
        self.prometheus.close()

    # -- hooks ---------------------------------------------------------------------------

    def totals(self) -> dict[str, int]:
        with self._counter_lock:
            return {"BackupsGaveUp": self.counters["BackupsGaveUp"]}

    def on_gave_up(self, message_id: str, reasons: list[str]) -> None:
        """The consumer's `on_gave_up`: retries exhausted, SQS will dead-letter it."""
        with self._counter_lock:
            self.counters["BackupsGaveUp"] += 1
        self.alerts.submit(backup_gave_up(message_id, reasons))

    def alert(self, subject: str, detail: str) -> None:
        """A generic operational alert (volume not ready, unencrypted volume, job findings)."""
        self.alerts.submit(operational(subject, detail))

    def config_rejected(self, path: str, problems: list[str]) -> None:
        self.alerts.submit(config_rejected(path, problems))

    def agent_failed(self, error: BaseException) -> None:
        self.alerts.submit(agent_stopped(error))

    # The consumer's PauseListener (agent/pipeline/pause.py): one alert when it pauses, one
    # when it resumes. A volume lost or full while running is told this way, not once per
    # failed object.

    def on_paused(self, verdict: Verdict) -> None:
        self.alerts.submit(
            backups_paused(
                str(self.root), verdict.reason, verdict.free_bytes, self.queue_retention()
            )
        )

    def on_resumed(self, verdict: Verdict, paused_seconds: float) -> None:
        self.alerts.submit(backups_resumed(str(self.root), paused_seconds, verdict.free_bytes))

    def on_held_back(self, held: HeldBack) -> None:
        self.alerts.submit(
            held_back(
                f"s3://{held.bucket}/{held.key}",
                held.size,
                held.free_bytes,
                held.hold_seconds,
                held.receive_count,
                held.max_receive_count,
            )
        )

    def queue_retention(self) -> float | None:
        """The main queue's MessageRetentionPeriod in seconds (asked once), or None."""
        if self._retention_seconds is None:
            try:
                attributes = self.clients.sqs.get_queue_attributes(
                    QueueUrl=self.config.queue.url, AttributeNames=["MessageRetentionPeriod"]
                )["Attributes"]
                self._retention_seconds = float(attributes["MessageRetentionPeriod"])
            except Exception as exc:  # noqa: BLE001 - the alert goes out without it
                log.warning("queues.retention_unknown", error=str(exc))
        return self._retention_seconds

    def observe(self, process: Processor) -> Processor:
        """Wrap the backup processor: per-object histograms and integrity alerts."""

        def observed(event: ObjectEvent) -> Result:
            started = time.monotonic()
            try:
                result = process(event)
            except IntegrityError as exc:
                self.alerts.submit(integrity_failure(f"s3://{event.bucket}/{event.key}", str(exc)))
                raise
            if result.pending is not None:  # observed once recorded (agent/pipeline/commit.py)
                result.pending.on_done(
                    lambda done: (
                        self._observe(event, started, done) if isinstance(done, Result) else None
                    )
                )
                return result
            self._observe(event, started, result)
            return result

        return observed

    def _observe(self, event: ObjectEvent, started: float, result: Result) -> None:
        self.prometheus.duration.observe(time.monotonic() - started)
        lag = max(0.0, self.clock() - event.event_time.timestamp())
        self.prometheus.lag.observe(lag)
        self.observations.add("BackupLagSeconds", lag)
        if result.copy is not None:
            self.prometheus.object_bytes.observe(result.copy.size)

    # -- jobs ----------------------------------------------------------------------------

    def _register_jobs(self) -> None:
        self.jobs.register("metrics", self.publish_metrics, DEFAULT_SCHEDULES["metrics"])
        self.jobs.register("disk", self.check_disk, DEFAULT_SCHEDULES["disk"])
        self.jobs.register("queues", self.sample_queues, DEFAULT_SCHEDULES["queues"])
        if self.config.alerts.digest:
            if self.config.alerts.email is None and self.config.alerts.webhook is None:
                log.warning(
                    "digest.no_email", hint="set alerts.email or alerts.webhook to receive it"
                )
            else:
                self.jobs.register("digest", self.send_digest, DEFAULT_SCHEDULES["digest"])

    def check_disk(self) -> None:
        """The disk job: the used-percent alert, then the reading into the forecast."""
        self.disk_monitor.check()
        if self.disk_monitor.last is not None:
            self.forecast.add(self.disk_monitor.last)

    def publish_metrics(self) -> None:
        points = self.sampler.sample()
        if self.publisher is not None:
            self.publisher.add(points)
            self.publisher.flush()

    def send_digest(self) -> None:
        self.alerts.send_now(self.digest.notice(self.clock()))

    def sample_queues(self) -> None:
        """Queue depths for Prometheus; an alert when the dead-letter queue grows."""
        gauge = self.prometheus.queue_messages
        main = self._queue_attributes(self.config.queue.url)
        gauge.labels("main", "visible").set(main["visible"])
        gauge.labels("main", "in_flight").set(main["in_flight"])
        dlq_url = self._dead_letter()
        if dlq_url is None:
            return
        dlq = self._queue_attributes(dlq_url)
        gauge.labels("dead_letter", "visible").set(dlq["visible"])
        previous, self._dead_letter_seen = self._dead_letter_seen, dlq["visible"]
        if previous is not None and dlq["visible"] > previous:
            self.alerts.submit(
                Alert(
                    AlertKind.DEAD_LETTER,
                    key=dlq_url,
                    summary=(
                        f"{dlq['visible'] - previous} message(s) moved to the dead-letter queue"
                        f" (now {dlq['visible']})"
                    ),
                    details={"queue": dlq_url, "messages": str(dlq["visible"])},
                )
            )

    def _queue_attributes(self, url: str) -> dict[str, int]:
        attributes = self.clients.sqs.get_queue_attributes(
            QueueUrl=url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return {
            "visible": int(attributes.get("ApproximateNumberOfMessages", 0)),
            "in_flight": int(attributes.get("ApproximateNumberOfMessagesNotVisible", 0)),
        }

    def _dead_letter(self) -> str | None:
        if self._dead_letter_url is None:
            try:
                self._dead_letter_url = self.clients.sqs.get_queue_url(
                    QueueName=self.config.queue.dead_letter_name
                )["QueueUrl"]
            except Exception:  # noqa: BLE001 - no DLQ (yet): depth unknown, not an error
                log.debug("queues.no_dead_letter_queue")
                return None
        return self._dead_letter_url
