"""CloudWatch metrics: sample the agent's figures, buffer them, send them in batches.

Backups never touch CloudWatch. Worker threads only add to in-memory figures (`Stats`,
`Observations`); the scheduled metrics job samples them into datapoints and sends the
buffer with PutMetricData. When CloudWatch is unreachable the datapoints stay buffered
(bounded; the oldest are dropped first) and the outage is logged once, then its end.
"""

from __future__ import annotations

import collections
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import botocore.exceptions
import psutil
import structlog

from agent.aws import error_code
from agent.config import Config
from agent.imds import DEFAULT_ENDPOINT, Imds, MetadataUnavailable
from agent.stats import RECORDS_REJECTED, Stats

if TYPE_CHECKING:
    from mypy_boto3_cloudwatch import CloudWatchClient
    from mypy_boto3_cloudwatch.type_defs import MetricDatumTypeDef

log = structlog.get_logger("agent.metrics")

BATCH_SIZE = 500  # PutMetricData takes 1,000 metrics and 1 MB; half keeps well inside both


# -- what is measured --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DiskUsage:
    total: int
    used: int
    free: int
    percent: float


DiskUsageReader = Callable[[Path], DiskUsage]


def disk_usage(path: Path) -> DiskUsage:
    """Space on the filesystem holding `path` (psutil; percent as `df` shows it)."""
    usage = psutil.disk_usage(str(path))
    return DiskUsage(usage.total, usage.used, usage.free, float(usage.percent))


@dataclass(frozen=True, slots=True)
class StatisticSet:
    count: int
    total: float
    minimum: float
    maximum: float


class Observations:
    """Per-event values (lag, duration) summed into statistic sets until drained."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sets: dict[str, list[float]] = {}

    def add(self, name: str, value: float) -> None:
        with self._lock:
            current = self._sets.get(name)
            if current is None:
                self._sets[name] = [1, value, value, value]
            else:
                current[0] += 1
                current[1] += value
                current[2] = min(current[2], value)
                current[3] = max(current[3], value)

    def drain(self) -> dict[str, StatisticSet]:
        with self._lock:
            sets, self._sets = self._sets, {}
        return {name: StatisticSet(int(s[0]), s[1], s[2], s[3]) for name, s in sets.items()}


@dataclass(frozen=True, slots=True)
class Datapoint:
    name: str
    value: float | StatisticSet
    unit: str
    timestamp: datetime
    # Its own dimensions in place of the instance's (a fleet-wide figure: `Fleet=<queue>`)
    dimensions: tuple[tuple[str, str], ...] | None = None
    # dimensions of this series besides the instance's, e.g. (("Category", "finance"),)
    extra: tuple[tuple[str, str], ...] = ()

    def to_cloudwatch(self, dimensions: list[dict[str, str]]) -> dict[str, Any]:
        if self.dimensions is not None:
            dimensions = [{"Name": name, "Value": value} for name, value in self.dimensions]
        datum: dict[str, Any] = {
            "MetricName": self.name,
            "Dimensions": dimensions + [{"Name": n, "Value": v} for n, v in self.extra],
            "Timestamp": self.timestamp,
            "Unit": self.unit,
        }
        if isinstance(self.value, StatisticSet):
            datum["StatisticValues"] = {
                "SampleCount": float(self.value.count),
                "Sum": self.value.total,
                "Minimum": self.value.minimum,
                "Maximum": self.value.maximum,
            }
        else:
            datum["Value"] = float(self.value)
        return datum


# name → (unit, meaning); docs/monitoring.md's table and the dashboard use the same names.
COUNTERS = {
    "BackupsSucceeded": ("Count", "objects backed up (or recorded) since the last sample"),
    "BackupsFailed": ("Count", "backup attempts that failed since the last sample"),
    "BackupsGaveUp": ("Count", "messages given up on (retries exhausted) since the last sample"),
    "BytesBackedUp": ("Bytes", "object bytes read from S3 and backed up"),
    "BytesStored": ("Bytes", "compressed bytes newly written to the volume"),
    "EventsIgnored": ("Count", "event records ignored on purpose (tagging, ACL, test event, ...)"),
    "ObjectsArchived": ("Count", "versions found that S3 will not serve (archived, SSE-C)"),
    "MessagesHeldBack": ("Count", "messages held back: their object did not fit the room left"),
    "RecordsRejected": ("Count", "journal lines and ledger items skipped as invalid (once each)"),
}
GAUGES = {
    "DiskUsedPercent": ("Percent", "used space of the backup volume"),
    "DiskFreeBytes": ("Bytes", "free space of the backup volume"),
    "SecondsSinceLastBackup": ("Seconds", "since the last successful backup (or agent start)"),
    "MessagesInFlight": ("Count", "SQS messages being worked on"),
    "Paused": ("None", "1 while the consumer is paused (no volume, or no room on it), else 0"),
    "DaysUntilFull": ("None", "days until the volume reaches its floor at the recent growth"),
}
# Counted per category (`categories:` in config), with the dimension Category besides the
# instance's: a series appears at a category's first backup.
CATEGORY_COUNTERS = {
    "BackupsByCategory": ("Count", "versions backed up since the last sample, per Category"),
}
STATISTIC_SETS = {
    "BackupLagSeconds": ("Seconds", "S3 event time to durable copy, per object"),
}


class Sampler:
    """Turns Stats (running totals) into datapoints: counters as deltas, gauges as values."""

    def __init__(
        self,
        stats: Stats,
        root: Path,
        *,
        observations: Observations | None = None,
        disk: DiskUsageReader = disk_usage,
        counters: Callable[[], Mapping[str, int]] | None = None,
        days_until_full: Callable[[], float | None] = lambda: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.stats = stats
        self.days_until_full = days_until_full
        self.root = root
        self.observations = observations or Observations()
        self.disk = disk
        self.counters = counters
        self.clock = clock
        self._previous: dict[str, int] = {}
        self._previous_categories: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()

    def totals(self) -> dict[str, int]:
        stats = self.stats.snapshot()
        totals = {
            "BackupsSucceeded": stats.backups_succeeded,
            "BackupsFailed": stats.backups_failed,
            "BytesBackedUp": stats.bytes_backed_up,
            "BytesStored": stats.bytes_stored,
            "EventsIgnored": sum(stats.ignored.values()),
            "ObjectsArchived": sum(stats.archived.values()),
            "MessagesHeldBack": stats.held_back,
            "RecordsRejected": stats.lifecycle[RECORDS_REJECTED],
        }
        if self.counters is not None:
            totals.update(self.counters())
        return totals

    def seconds_since_last_backup(self, now: float) -> float:
        since = self.stats.last_success_at or self.stats.started_at
        return max(0.0, now - since)

    def sample(self) -> list[Datapoint]:
        """Datapoints since the previous sample (one caller at a time)."""
        with self._lock:
            return self._sample()

    def _sample(self) -> list[Datapoint]:
        now = self.clock()
        stamp = datetime.fromtimestamp(now, UTC)
        points = []
        for name, total in self.totals().items():
            delta = total - self._previous.get(name, 0)
            self._previous[name] = total
            points.append(Datapoint(name, float(max(0, delta)), COUNTERS[name][0], stamp))
        points.append(
            Datapoint(
                "SecondsSinceLastBackup", self.seconds_since_last_backup(now), "Seconds", stamp
            )
        )
        current = self.stats.snapshot()
        for category, count in sorted((current.categories - self._previous_categories).items()):
            dimension = (("Category", category),)
            points.append(
                Datapoint("BackupsByCategory", float(count), "Count", stamp, extra=dimension)
            )
        self._previous_categories = collections.Counter(current.categories)
        points.append(
            Datapoint("MessagesInFlight", float(current.messages_in_flight), "Count", stamp)
        )
        paused = 1.0 if current.paused_reason is not None else 0.0
        points.append(Datapoint("Paused", paused, "None", stamp))
        days = self.days_until_full()
        if days is not None:
            points.append(Datapoint("DaysUntilFull", days, "None", stamp))
        try:
            usage = self.disk(self.root)
        except OSError as exc:
            log.warning("metrics.disk_unreadable", root=str(self.root), error=str(exc))
        else:
            points.append(Datapoint("DiskUsedPercent", usage.percent, "Percent", stamp))
            points.append(Datapoint("DiskFreeBytes", float(usage.free), "Bytes", stamp))
        for name, values in self.observations.drain().items():
            unit = STATISTIC_SETS.get(name, ("None", ""))[0]
            points.append(Datapoint(name, values, unit, stamp))
        return points


# -- where the agent is --------------------------------------------------------------------


def imds_instance_id(timeout: float = 1.0, endpoint: str | None = None) -> str | None:
    """The EC2 instance id through IMDSv2 (token first), or None off EC2 / when disabled."""
    if os.environ.get("AWS_EC2_METADATA_DISABLED", "").lower() == "true":
        return None
    base = endpoint or os.environ.get("AWS_EC2_METADATA_SERVICE_ENDPOINT") or DEFAULT_ENDPOINT
    try:
        value = Imds(base, timeout=timeout).instance_id().strip()
    except MetadataUnavailable as exc:
        log.debug("metrics.imds_unavailable", error=str(exc))
        return None
    return value or None


def resolve_instance_id(
    configured: str | None,
    *,
    fetch: Callable[[], str | None] = imds_instance_id,
    hostname: Callable[[], str] = socket.gethostname,
) -> str:
    """`metrics.instance_id` if set, else IMDSv2, else the hostname."""
    if configured:
        return configured
    return fetch() or hostname()


def resolve_dimensions(
    config: Config, *, fetch: Callable[[], str | None] | None = None
) -> dict[str, str]:
    """InstanceId and Volume (plus `metrics.extra_dimensions`) — shared by metrics, alarms,
    dashboard, so the alarms find the series the agent writes."""
    metrics = config.metrics
    instance = resolve_instance_id(
        metrics.instance_id,
        fetch=fetch or (lambda: imds_instance_id(metrics.imds_timeout.total_seconds())),
    )
    volume = metrics.volume or str(config.storage.root)
    return {"InstanceId": instance, "Volume": volume, **metrics.extra_dimensions}


def dimension_list(dimensions: Mapping[str, str]) -> list[dict[str, str]]:
    return [{"Name": name, "Value": value} for name, value in dimensions.items()]


# -- sending -------------------------------------------------------------------------------


class CloudWatchPublisher:
    """A bounded buffer of datapoints, sent with PutMetricData by `flush()`."""

    def __init__(
        self,
        cloudwatch: CloudWatchClient,
        namespace: str,
        dimensions: Mapping[str, str],
        *,
        max_buffer: int = 20_000,
        batch_size: int = BATCH_SIZE,
    ) -> None:
        self.cloudwatch = cloudwatch
        self.namespace = namespace
        self.dimensions = dimension_list(dimensions)
        self.batch_size = batch_size
        self._buffer: collections.deque[Datapoint] = collections.deque(maxlen=max_buffer)
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self.sent = 0
        self.dropped = 0
        self.failed_attempts = 0  # in the current outage; 0 when CloudWatch answers

    def add(self, points: Iterable[Datapoint]) -> None:
        with self._lock:
            for point in points:
                if len(self._buffer) == self._buffer.maxlen:
                    self.dropped += 1
                self._buffer.append(point)

    def pending(self) -> int:
        with self._lock:
            return len(self._buffer)

    def flush(self, deadline: float | None = None) -> int:
        """Send everything buffered; keep what could not be sent. Returns datapoints sent."""
        with self._flush_lock:
            with self._lock:
                points = list(self._buffer)
                self._buffer.clear()
            sent = 0
            while sent < len(points):
                if deadline is not None and time.monotonic() > deadline:
                    break
                batch = points[sent : sent + self.batch_size]
                if not self._send(batch):
                    break
                sent += len(batch)
            self._requeue(points[sent:])
            self.sent += sent
            return sent

    def _send(self, batch: list[Datapoint]) -> bool:
        try:
            self.cloudwatch.put_metric_data(
                Namespace=self.namespace,
                MetricData=[
                    cast("MetricDatumTypeDef", p.to_cloudwatch(self.dimensions)) for p in batch
                ],
            )
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            self.failed_attempts += 1
            if self.failed_attempts == 1:
                log.error(
                    "metrics.publish_failed",
                    error=str(exc),
                    code=error_code(exc),
                    buffered=len(batch),
                )
            return False
        if self.failed_attempts:
            log.info(
                "metrics.publish_recovered",
                failed_attempts=self.failed_attempts,
                dropped=self.dropped,
            )
            self.failed_attempts = 0
        return True

    def _requeue(self, unsent: list[Datapoint]) -> None:
        if not unsent:
            return
        with self._lock:
            newer = list(self._buffer)
            self._buffer.clear()
            keep = unsent + newer
            overflow = max(0, len(keep) - (self._buffer.maxlen or len(keep)))
            self.dropped += overflow
            self._buffer.extend(keep[overflow:])
