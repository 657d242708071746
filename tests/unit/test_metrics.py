"""CloudWatch metrics: sampling Stats into datapoints, dimensions, the buffered publisher."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import botocore.exceptions
import pytest
from structlog.testing import capture_logs

from agent.monitoring.metrics import (
    CloudWatchPublisher,
    Datapoint,
    DiskUsage,
    Observations,
    Sampler,
    imds_instance_id,
    resolve_dimensions,
    resolve_instance_id,
)
from agent.runtime.wiring import backup_service
from agent.stats import Stats
from tests.support.aws import BUCKET, TABLE, make_config


def fixed_disk(root: Path) -> DiskUsage:
    return DiskUsage(total=1000, used=870, free=130, percent=87.0)


def by_name(points: list[Datapoint]) -> dict[str, Datapoint]:
    return {p.name: p for p in points}


def test_counters_are_sent_as_deltas_and_gauges_as_values():
    stats = Stats(started_at=1000.0)
    observations = Observations()
    clock = [2000.0]
    sampler = Sampler(
        stats, Path("/mnt"), observations=observations, disk=fixed_disk, clock=lambda: clock[0]
    )
    stats.record_success("stored", 100, 40, 2.0, now=1500.0)
    stats.record_success("stored", 300, 60, 4.0, now=1600.0)
    stats.record_failure("PermanentError")
    observations.add("BackupLagSeconds", 2.0)
    observations.add("BackupLagSeconds", 4.0)
    first = by_name(sampler.sample())
    assert first["BackupsSucceeded"].value == 2 and first["BackupsFailed"].value == 1
    assert first["BytesBackedUp"].value == 400 and first["BytesStored"].value == 100
    assert first["SecondsSinceLastBackup"].value == 400
    assert first["DiskUsedPercent"].value == 87.0 and first["DiskFreeBytes"].value == 130
    lag = first["BackupLagSeconds"].value
    assert (lag.count, lag.total, lag.minimum, lag.maximum) == (2, 6.0, 2.0, 4.0)

    stats.record_success("stored", 50, 50, None, now=1900.0)
    clock[0] = 2060.0
    second = by_name(sampler.sample())
    assert second["BackupsSucceeded"].value == 1 and second["BackupsFailed"].value == 0
    assert second["SecondsSinceLastBackup"].value == 160
    assert "BackupLagSeconds" not in second  # no observations this interval


def test_events_ignored_on_purpose_are_a_counter_of_their_own():
    stats = Stats()
    sampler = Sampler(stats, Path("/mnt"), disk=fixed_disk)
    stats.record_ignored("ObjectTagging:Put")
    stats.record_ignored("s3:TestEvent")
    first = by_name(sampler.sample())
    assert first["EventsIgnored"].value == 2 and first["EventsIgnored"].unit == "Count"
    assert first["BackupsSucceeded"].value == 0 and first["BackupsFailed"].value == 0
    stats.record_ignored("ObjectTagging:Put")
    assert by_name(sampler.sample())["EventsIgnored"].value == 1


def test_versions_found_archived_are_counted_apart_from_backups_and_failures():
    stats = Stats()
    sampler = Sampler(stats, Path("/mnt"), disk=fixed_disk)
    stats.record_archived("archived")
    stats.record_archived("archived")
    stats.record_archived("sse-c")
    first = by_name(sampler.sample())
    assert first["ObjectsArchived"].value == 3 and first["ObjectsArchived"].unit == "Count"
    assert first["BackupsSucceeded"].value == 0 and first["BackupsFailed"].value == 0


def test_before_any_backup_seconds_since_last_backup_counts_from_the_start():
    sampler = Sampler(Stats(started_at=100.0), Path("/"), disk=fixed_disk, clock=lambda: 160.0)
    assert by_name(sampler.sample())["SecondsSinceLastBackup"].value == 60


def test_an_unreadable_disk_skips_the_disk_figures_only():
    def gone(root: Path) -> DiskUsage:
        raise FileNotFoundError(root)

    points = by_name(Sampler(Stats(), Path("/nope"), disk=gone).sample())
    assert "DiskUsedPercent" not in points and "BackupsSucceeded" in points


def test_configured_instance_id_wins_then_imds_then_hostname():
    assert resolve_instance_id("i-conf", fetch=lambda: "i-imds") == "i-conf"
    assert resolve_instance_id(None, fetch=lambda: "i-imds") == "i-imds"
    assert resolve_instance_id(None, fetch=lambda: None, hostname=lambda: "web-1") == "web-1"


def test_dimensions_are_instance_and_volume(backup_root):
    config = make_config(backup_root, metrics={"extra_dimensions": {"Fleet": "eu"}})
    dims = resolve_dimensions(config, fetch=lambda: "i-0123")
    assert dims == {"InstanceId": "i-0123", "Volume": str(backup_root), "Fleet": "eu"}


class FakeImds(BaseHTTPRequestHandler):
    token = "tok-123"

    def do_PUT(self):
        assert self.path == "/latest/api/token"
        assert self.headers["X-aws-ec2-metadata-token-ttl-seconds"]
        self._reply(self.token)

    def do_GET(self):
        if self.headers.get("X-aws-ec2-metadata-token") != self.token:
            self.send_response(401)
            self.end_headers()
            return
        self._reply("i-0feedbeef")

    def _reply(self, body: str) -> None:
        self.send_response(200)
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args):
        pass


@pytest.fixture
def imds():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeImds)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_imds_v2_token_then_instance_id(imds, monkeypatch):
    monkeypatch.delenv("AWS_EC2_METADATA_DISABLED")
    assert imds_instance_id(timeout=2, endpoint=imds) == "i-0feedbeef"


def test_imds_unreachable_or_disabled_gives_none(monkeypatch):
    assert imds_instance_id(endpoint="http://127.0.0.1:9") is None  # disabled by conftest
    monkeypatch.delenv("AWS_EC2_METADATA_DISABLED")
    assert imds_instance_id(timeout=0.5, endpoint="http://127.0.0.1:9") is None


class FlakyCloudWatch:
    def __init__(self) -> None:
        self.down = False
        self.calls: list[list[dict]] = []

    def put_metric_data(self, Namespace: str, MetricData: list[dict]) -> None:
        if self.down:
            raise botocore.exceptions.EndpointConnectionError(endpoint_url="https://monitoring")
        self.calls.append(MetricData)


def points(n: int) -> list[Datapoint]:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    return [
        Datapoint("BackupsSucceeded", 1.0, "Count", start + timedelta(seconds=i)) for i in range(n)
    ]


def test_datapoints_are_sent_in_batches():
    cloudwatch = FlakyCloudWatch()
    publisher = CloudWatchPublisher(cloudwatch, "BackupAgent", {"InstanceId": "i-1"}, batch_size=4)
    publisher.add(points(10))
    assert publisher.flush() == 10
    assert [len(c) for c in cloudwatch.calls] == [4, 4, 2]
    assert cloudwatch.calls[0][0]["Dimensions"] == [{"Name": "InstanceId", "Value": "i-1"}]


def test_an_outage_is_logged_once_keeps_the_datapoints_and_logs_the_recovery():
    cloudwatch = FlakyCloudWatch()
    publisher = CloudWatchPublisher(cloudwatch, "BackupAgent", {}, batch_size=5)
    cloudwatch.down = True
    with capture_logs() as logs:
        for _ in range(4):
            publisher.add(points(3))
            assert publisher.flush() == 0
        assert publisher.pending() == 12
        cloudwatch.down = False
        assert publisher.flush() == 12
    events = [e["event"] for e in logs]
    assert events.count("metrics.publish_failed") == 1
    assert events.count("metrics.publish_recovered") == 1
    assert publisher.pending() == 0


def test_a_long_outage_drops_the_oldest_datapoints_first():
    cloudwatch = FlakyCloudWatch()
    publisher = CloudWatchPublisher(cloudwatch, "BackupAgent", {}, max_buffer=5)
    cloudwatch.down = True
    publisher.add(points(8))
    publisher.flush()
    assert publisher.pending() == 5 and publisher.dropped == 3
    cloudwatch.down = False
    publisher.flush()
    sent = [d["Timestamp"].second for d in cloudwatch.calls[0]]
    assert sent == [3, 4, 5, 6, 7]


def test_records_the_daemon_rejects_are_a_counter_counted_once_each(aws, config, volume):
    """A malformed ledger item read through the daemon's wiring is counted once, however
    often it is read again, and sampled as RecordsRejected (a delta, like the others)."""
    stats = Stats()
    sampler = Sampler(stats, Path("/mnt"), disk=fixed_disk)
    service = backup_service(config, aws, volume, "vol-test", stats=stats)
    item = {"pk": {"S": f"{BUCKET}/bad.txt"}, "sk": {"S": "LATEST"}, "size": {"N": "-5"}}
    aws.dynamodb.put_item(TableName=TABLE, Item=item)

    service.ledger.latest(BUCKET, "bad.txt")
    service.ledger.latest(BUCKET, "bad.txt")  # the same item: not counted again

    first = by_name(sampler.sample())
    assert first["RecordsRejected"].value == 1 and first["RecordsRejected"].unit == "Count"
    assert first["BackupsFailed"].value == 0
    assert by_name(sampler.sample())["RecordsRejected"].value == 0
