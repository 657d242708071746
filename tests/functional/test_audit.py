"""Each audited action leaves one record: on the volume, and in CloudWatch Logs (mock_aws)
where it is still found after the volume's copy is gone."""

from __future__ import annotations

import io
import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.audit.cloudwatch import METRIC_FILTERS, read_from_logs
from agent.audit.records import Actor, AuditRecord
from agent.audit.trail import AUDIT_DIR, AuditTrail
from agent.cli import agent as agent_cli
from agent.cli import restore as restore_cli
from agent.cli.common import ExitCode
from agent.config import Config, load_config
from agent.lifecycle.gc import GarbageCollector
from agent.runtime.daemon import Daemon
from tests.support.aws import BUCKET, QUEUE_URL, REGION, TABLE, make_config
from tests.support.backed_up import BackedUp
from tests.support.snapshots import make_volume
from tests.support.waiting import wait_until

LOG_GROUP = "backup-agent-audit"
SHARES = "company-shares"
SECTIONS: dict[str, Any] = {
    "audit": {"log_group": LOG_GROUP, "log_retention_days": 30},
    "restore": {"workers": 2, "staging_bucket": SHARES},
    "retention": {"keep_last_versions": 1},
    "gc": {"grace_period": "0s"},
    "scrub": {"share_per_run": 1.0},
}


@pytest.fixture
def config(backup_root: Path) -> Config:
    return make_config(backup_root, **SECTIONS)


@pytest.fixture
def config_file(tmp_path: Path, backup_root: Path) -> Path:
    path = tmp_path / "config.yaml"
    raw: dict[str, Any] = {
        "aws": {"region": REGION},
        "queue": {"url": QUEUE_URL, "wait_time_seconds": 0},
        "buckets": [BUCKET],
        "storage": {"root": str(backup_root), "min_free_bytes": 0, "compression_threads": 1},
        "state": {"table": TABLE},
        "logging": {"format": "json", "level": "WARNING"},
        **SECTIONS,
    }
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


@pytest.fixture
def backups(aws, volume) -> BackedUp:
    return BackedUp(aws, volume)


@pytest.fixture(autouse=True)
def _restore_logging():
    import logging

    import structlog

    handlers = list(logging.root.handlers)
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)
    logging.root.handlers[:] = handlers


def restore(config_file: Path, command: str, *args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = restore_cli.main([command, "--config", str(config_file), *args], out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def on_volume(root: Path, action: str) -> list[AuditRecord]:
    return [r for r in AuditTrail.on_volume(root).read() if r.action == action]


def found_everywhere(aws, root: Path, action: str) -> AuditRecord:
    """The one record of `action`: on the volume, then — the volume's copy removed — in
    CloudWatch Logs, the same record."""
    [record] = on_volume(root, action)
    shutil.rmtree(root / AUDIT_DIR)
    from_logs = [r for r in read_from_logs(aws.logs(), LOG_GROUP) if r.action == action]
    assert from_logs == [record]
    return record


def test_bootstrap_made_the_log_group_with_retention_and_metric_filters(aws):
    [group] = aws.logs().describe_log_groups(logGroupNamePrefix=LOG_GROUP)["logGroups"]
    assert group["retentionInDays"] == 30
    filters = aws.logs().describe_metric_filters(logGroupName=LOG_GROUP)["metricFilters"]
    assert {f["filterName"] for f in filters} == set(METRIC_FILTERS)


def test_a_restore_to_a_directory_is_recorded_with_its_user_keys_and_bytes(
    aws, backups, volume, config_file, tmp_path
):
    version = backups.put("docs/a.txt", b"alpha" * 10)
    backups.put("docs/b.txt", b"beta" * 10)
    target = tmp_path / "out"

    code, _out, err = restore(config_file, "restore", "--prefix", "docs/", "--to", str(target))

    assert code == ExitCode.OK, err
    record = found_everywhere(aws, volume.root, "restore")
    assert record.outcome == "ok"
    assert record.target == str(target.resolve())
    assert record.prefix == "docs/"
    assert set(record.keys) == {f"s3://{BUCKET}/docs/a.txt", f"s3://{BUCKET}/docs/b.txt"}
    assert version in record.versions
    assert (record.files, record.bytes) == (2, 90)
    assert record.who.user and record.who.uid >= 0
    assert record.who.aws_account == "123456789012"  # moto's STS caller


def test_a_restore_into_s3_is_recorded_as_restore_s3(aws, backups, volume, config_file):
    backups.put("k.txt", b"body")

    code, _out, err = restore(
        config_file, "restore", "--key", "k.txt", "--to-s3", "--to-prefix", "back/"
    )

    assert code == ExitCode.OK, err
    record = found_everywhere(aws, volume.root, "restore-s3")
    assert record.target == f"s3://{BUCKET}/back/"
    assert record.keys == (f"s3://{BUCKET}/k.txt",) and record.bytes == 4


def test_a_dry_run_restore_records_nothing(aws, backups, volume, config_file, tmp_path):
    backups.put("k.txt", b"body")
    code, _out, _err = restore(
        config_file, "restore", "--all", "--to", str(tmp_path / "o"), "--dry-run"
    )
    assert code == ExitCode.OK
    assert list(AuditTrail.on_volume(volume.root).read()) == []


def test_a_share_records_the_expiry_and_never_the_signature(aws, backups, volume, config_file):
    backups.put("report.pdf", b"%PDF" * 100)

    code, out, err = restore(config_file, "share", "--key", "report.pdf", "--expires", "2h")

    assert code == ExitCode.OK, err
    url = out.strip()
    signature = url.split("X-Amz-Signature=")[1].split("&")[0]
    text = ""
    for segment in (volume.root / AUDIT_DIR).glob("*.jsonl"):
        text += segment.read_text()
    assert signature not in text and "X-Amz-" not in text
    record = found_everywhere(aws, volume.root, "share")
    expires = datetime.fromisoformat(record.details["expires_at"])
    assert timedelta(hours=1, minutes=59) < expires - record.at <= timedelta(hours=2)
    assert record.keys == (f"s3://{BUCKET}/report.pdf",)
    assert record.target is not None and record.target.startswith(f"s3://{SHARES}/")


def test_verify_is_recorded_with_its_problems(aws, backups, volume, config_file):
    backups.put("a.txt", b"alpha")
    record_of = backups.service.ledger.latest(BUCKET, "a.txt")
    path = volume.copy_path(record_of.sha256)
    path.write_bytes(b"not zstd")

    code, _out, _err = restore(config_file, "verify")

    assert code == ExitCode.FAILURE
    record = found_everywhere(aws, volume.root, "verify")
    assert record.outcome == "failed" and record.details["problems"] == 1
    assert record.keys == (f"s3://{BUCKET}/a.txt",)


def test_a_share_that_raises_is_recorded_as_failed_with_its_key_and_error(
    aws, backups, volume, config_file
):
    backups.put("report.pdf", b"%PDF" * 100)
    aws.s3.delete_bucket(Bucket=SHARES)  # the staging bucket is gone: the upload is refused

    code, out, err = restore(config_file, "share", "--key", "report.pdf")

    assert code != ExitCode.OK and out == ""
    assert "NoSuchBucket" in err
    record = found_everywhere(aws, volume.root, "share")
    assert record.outcome == "failed"
    assert record.keys == (f"s3://{BUCKET}/report.pdf",) and record.keys_total == 1
    assert "NoSuchBucket" in record.details["error"]
    assert record.details["error_class"] in record.details["error"]
    assert record.who.aws_account == "123456789012"


def test_a_share_refused_for_a_key_never_backed_up_is_recorded_as_failed(
    aws, backups, volume, config_file
):
    code, _out, err = restore(config_file, "share", "--key", "secret.pdf", "--version", "v9")

    assert code == ExitCode.FAILURE
    [record] = on_volume(volume.root, "share")
    assert record.outcome == "failed" and record.details["error_class"] == "Refused"
    assert record.keys == (f"s3://{BUCKET}/secret.pdf",) and record.versions == ("v9",)
    assert record.details["error"].split(": ", 1)[1] in err


def test_a_verify_that_raises_is_recorded_as_failed_with_its_prefix_and_error(
    aws, backups, volume, config_file
):
    backups.put("docs/a.txt", b"alpha")
    aws.dynamodb.delete_table(TableName=TABLE)  # the ledger unreachable: the Query raises

    code, _out, err = restore(config_file, "verify", "--prefix", "docs/")

    assert code != ExitCode.OK and err  # the error goes on to the operator as before
    record = found_everywhere(aws, volume.root, "verify")
    assert record.outcome == "failed" and record.prefix == "docs/"
    assert record.details["error_class"] in record.details["error"]
    assert "ResourceNotFound" in record.details["error"] or "not found" in record.details["error"]
    assert record.files == 0


def test_retention_and_gc_removals_are_recorded(aws, backups, volume, config_file):
    first = backups.put("k.txt", b"one" * 10)
    backups.put("k.txt", b"two" * 10)

    assert agent_cli.main(["retention", "--config", str(config_file)]) == ExitCode.OK
    assert agent_cli.main(["gc", "--config", str(config_file)]) == ExitCode.OK

    [retention] = on_volume(volume.root, "retention")
    assert retention.versions == (first,) and retention.keys == (f"s3://{BUCKET}/k.txt",)
    [gc] = on_volume(volume.root, "gc")
    assert gc.files == 1 and gc.bytes > 0 and len(gc.details["removed_sha256"]) == 1
    shutil.rmtree(volume.root / AUDIT_DIR)
    from_logs = {r.action: r for r in read_from_logs(aws.logs(), LOG_GROUP)}
    assert from_logs["retention"] == retention and from_logs["gc"] == gc


def test_a_scrub_repair_is_recorded_with_the_healed_version(aws, backups, volume, config_file):
    version = backups.put("k.txt", b"precious" * 100)
    sha = backups.service.ledger.latest(BUCKET, "k.txt").sha256
    path = volume.copy_path(sha)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))

    assert agent_cli.main(["scrub", "--config", str(config_file)]) == ExitCode.OK

    record = found_everywhere(aws, volume.root, "scrub")
    assert record.details["healed"] == 1 and record.details["corrupt_sha256"] == [sha]
    assert record.versions == (version,)


def test_reindex_is_recorded(aws, backups, volume, config_file):
    backups.put("k.txt", b"x")
    assert agent_cli.main(["reindex", "--config", str(config_file)]) == ExitCode.OK
    record = found_everywhere(aws, volume.root, "reindex")
    assert record.target == f"dynamodb:{TABLE}" and record.details["records"] == 1


def test_a_snapshot_is_recorded(aws, volume, tmp_path, monkeypatch, backup_root):
    monkeypatch.setenv("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")
    volume_id = make_volume(aws.session.client("ec2"))
    path = tmp_path / "snap.yaml"
    raw = {
        "aws": {"region": REGION},
        "queue": {"url": QUEUE_URL},
        "buckets": [BUCKET],
        "storage": {"root": str(backup_root), "volume_id": volume_id},
        "state": {"table": TABLE},
        "logging": {"format": "json", "level": "WARNING"},
        "audit": {"log_group": LOG_GROUP},
        "snapshots": {"enabled": True, "schedule": "6h"},
    }
    path.write_text(yaml.safe_dump(raw))

    assert agent_cli.main(["snapshot", "--config", str(path)]) == ExitCode.OK

    record = found_everywhere(aws, volume.root, "snapshot")
    assert record.target and record.target.startswith("snap-")
    assert record.details["volume_id"] == volume_id


def test_a_config_reload_records_the_changed_sections(aws, volume, config_file):
    daemon = Daemon(load_config(config_file), aws, config_path=config_file)
    daemon.auditor = daemon.build_auditor()
    raw = yaml.safe_load(config_file.read_text())
    raw["consumer"] = {"workers": 3}
    config_file.write_text(yaml.safe_dump(raw))

    assert daemon.reloader is not None
    assert daemon.reloader.reload("test").status == "applied"

    record = found_everywhere(aws, volume.root, "config-reload")
    assert record.details["changed_sections"] == ["consumer"]


def test_the_audit_command_shows_records_from_the_volume_and_from_cloudwatch(
    aws, backups, volume, config_file, tmp_path
):
    backups.put("k.txt", b"body")
    assert restore(config_file, "restore", "--all", "--to", str(tmp_path / "o"))[0] == 0
    assert restore(config_file, "verify")[0] == 0

    code, out, _err = restore(config_file, "audit", "--json")
    assert code == ExitCode.OK
    assert [json.loads(line)["action"] for line in out.splitlines()] == ["restore", "verify"]
    code, out, _err = restore(config_file, "audit", "--since", "2999-01-01T00:00:00Z")
    assert out.endswith("0 records\n")
    code, out, _err = restore(config_file, "audit")
    assert "restore ok" in out and "2 records" in out

    shutil.rmtree(volume.root / AUDIT_DIR)
    code, out, _err = restore(config_file, "audit", "--cloudwatch", "--since", "1h", "--json")
    assert code == ExitCode.OK
    assert [json.loads(line)["action"] for line in out.splitlines()] == ["restore", "verify"]


def test_an_unreachable_log_group_leaves_the_record_on_the_volume_for_the_next_call(
    aws, backups, volume, config_file, tmp_path
):
    aws.logs().delete_log_group(logGroupName=LOG_GROUP)
    backups.put("k.txt", b"body")
    assert restore(config_file, "restore", "--all", "--to", str(tmp_path / "o"))[0] == 0
    assert len(on_volume(volume.root, "restore")) == 1

    aws.logs().create_log_group(logGroupName=LOG_GROUP)
    assert restore(config_file, "verify")[0] == 0  # its record ships the one left behind

    shutil.rmtree(volume.root / AUDIT_DIR)
    actions = [r.action for r in read_from_logs(aws.logs(), LOG_GROUP)]
    assert actions == ["restore", "verify"]


def test_records_at_or_after_since(tmp_path):
    trail = AuditTrail.on_volume(tmp_path)
    now = datetime(2026, 12, 1, tzinfo=UTC)
    who = Actor(uid=0, user="root")
    for hours in (3, 2, 1):
        trail.record(
            AuditRecord(at=now - timedelta(hours=hours), who=who, action="verify", outcome="ok")
        )
    assert len(list(trail.read(now - timedelta(hours=2)))) == 2


def test_the_dashboard_shows_the_trends_and_the_audit_counts(aws, config):
    from agent.operations.dashboard import Dashboard

    cloudwatch = aws.session.client("cloudwatch")
    board = Dashboard(cloudwatch, config)
    assert board.apply({"InstanceId": "i-0test", "Volume": "/mnt/backups"}) == "created"
    body = json.loads(cloudwatch.get_dashboard(DashboardName="backup-agent")["DashboardBody"])
    titles = {w["properties"].get("title") for w in body["widgets"]}
    assert "Restores, shares and removals per day (audit trail)" in titles
    flat = json.dumps(body)
    for name in (
        "AuditRestores",
        "AuditShares",
        "AuditRemovals",
        "DaysUntilFull",
        "backed / stored",
    ):
        assert name in flat
    per_hour = next(
        w for w in body["widgets"] if "backups per hour" in str(w["properties"].get("title"))
    )
    assert per_hour["properties"]["period"] == 3600


def test_the_daemons_scheduled_jobs_are_audited_and_the_inventory_job_registered(
    aws, backups, volume, backup_root
):
    aws.s3.create_bucket(Bucket="company-analytics")
    backups.put("k.txt", b"one")
    backups.put("k.txt", b"two")
    config = make_config(
        backup_root,
        **{
            **SECTIONS,
            "storage": {"root": str(backup_root), "min_free_bytes": 0},
            "metrics": {"prometheus": None, "cloudwatch": False, "instance_id": "i-test"},
            "retention": {"keep_last_versions": 1, "schedule": 3600},
            "gc": {"grace_period": "0s", "schedule": 3600},
            "inventory": {"bucket": "company-analytics", "schedule": 3600},
        },
    )
    while messages := aws.sqs.receive_message(QueueUrl=QUEUE_URL, MaxNumberOfMessages=10).get(
        "Messages"
    ):  # moto's own events for the puts: the consumer gets no work
        for message in messages:
            aws.sqs.delete_message(QueueUrl=QUEUE_URL, ReceiptHandle=message["ReceiptHandle"])
    daemon = Daemon(config, aws)
    daemon.start(volume.read_marker())
    try:
        for job in ("retention", "gc", "inventory"):
            assert daemon.monitoring is not None and daemon.monitoring.jobs.run_now(job), job
    finally:
        daemon.stop()

    records = {r.action: r for r in read_from_logs(aws.logs(), LOG_GROUP)}
    assert set(records) == {"retention", "gc", "inventory"}
    assert records["retention"].files == 1 and records["gc"].files == 1
    assert records["inventory"].details["rows"] == 2  # the version kept, the one expired
    assert [r.action for r in AuditTrail.on_volume(volume.root).read()] == [
        "retention",
        "gc",
        "inventory",
    ]


def _never_room(backup_root: Path, when_full: dict[str, Any]) -> Any:
    """A daemon's config with never room enough: the consumer pauses, the pressure check acts."""
    return make_config(
        backup_root,
        **{
            **SECTIONS,
            "storage": {"root": str(backup_root), "min_free_bytes": 64 << 40},
            "metrics": {"prometheus": None, "cloudwatch": False, "instance_id": "i-test"},
            "retention": {"when_full": when_full},
        },
    )


def test_retention_under_pressure_is_audited_and_alerted_even_when_its_collection_fails(
    aws, backups, volume, backup_root, monkeypatch
):
    first = backups.put("k.txt", b"one" * 10)
    second = backups.put("k.txt", b"two" * 10)
    backups.put("k.txt", b"three" * 10)
    config = _never_room(backup_root, {"keep_last_versions": 1})

    def collection_fails(self, **_kwargs):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(GarbageCollector, "run_once", collection_fails)
    alerts: list[tuple[str, str]] = []
    daemon = Daemon(config, aws, alert=lambda subject, detail: alerts.append((subject, detail)))
    daemon.start(volume.read_marker())
    try:
        wait_until(lambda: daemon.stats.paused_reason, what="the consumer paused for room")
        assert daemon.monitoring is not None
        assert not daemon.monitoring.jobs.run_now("retention-when-full")  # it raised
    finally:
        daemon.stop()

    [record] = on_volume(volume.root, "retention")
    assert record.outcome == "failed" and record.versions == (first, second)
    assert record.keys == (f"s3://{BUCKET}/k.txt",) and record.files == 2
    assert record.details["when_full"] and record.details["error_class"] == "OSError"
    assert on_volume(volume.root, "gc") == []  # the collection never finished
    [(subject, detail)] = [a for a in alerts if a[0].startswith("retention.when_full")]
    assert subject == "retention.when_full failed while making room"
    assert first in detail and second in detail and "OSError" in detail


def test_retention_under_pressure_records_its_versions_and_its_collection(
    aws, backups, volume, backup_root
):
    first = backups.put("k.txt", b"one" * 10)
    backups.put("k.txt", b"two" * 10)
    config = _never_room(backup_root, {"keep_last_versions": 1, "gc_grace_period": "5m"})
    daemon = Daemon(config, aws, alert=lambda subject, detail: None)
    daemon.start(volume.read_marker())
    try:
        wait_until(lambda: daemon.stats.paused_reason, what="the consumer paused for room")
        assert daemon.monitoring is not None
        assert daemon.monitoring.jobs.run_now("retention-when-full")
    finally:
        daemon.stop()

    [retention] = on_volume(volume.root, "retention")
    assert retention.outcome == "ok" and retention.versions == (first,)
    assert retention.details["by_stage"] == {"rules": 0, "when_full": 1}
    [gc] = on_volume(volume.root, "gc")
    assert gc.outcome == "ok" and gc.details["when_full"]
