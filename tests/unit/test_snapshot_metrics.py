"""Snapshot metrics as plain values, the age alarm as put_metric_alarm kwargs, the listing."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta

import boto3
import pytest
from moto import mock_aws

from agent.cli.output import print_snapshots
from agent.config import SnapshotsConfig
from agent.snapshots.metrics import snapshot_age_alarm, snapshot_metrics
from agent.snapshots.records import Snapshot, SnapshotRun

NOW = datetime(2026, 6, 10, 12, 0, tzinfo=UTC)


def snap(ident, hours_ago, state="completed", position=None):
    return Snapshot(
        ident,
        "vol-0123456789abcdef0",
        "us-east-1",
        state,
        NOW - timedelta(hours=hours_ago),
        progress="40%" if state == "pending" else "100%",
        journal_position=position,
    )


def test_metrics_are_age_of_newest_completed_count_and_last_duration():
    snaps = [snap("a", 30), snap("b", 6), snap("c", 1, "pending"), snap("d", 2, "error")]
    run = SnapshotRun(volume_id="vol-1", state="completed", duration_seconds=42.0)
    assert snapshot_metrics(snaps, NOW, run) == {
        "SnapshotCount": 2.0,
        "SnapshotAgeSeconds": 6 * 3600.0,
        "SnapshotDurationSeconds": 42.0,
    }


def test_no_completed_snapshot_means_no_age_value():
    assert snapshot_metrics([snap("c", 1, "pending")], NOW) == {"SnapshotCount": 0.0}


def test_the_age_alarm_allows_the_schedule_gap_plus_grace_and_cloudwatch_accepts_it():
    settings = SnapshotsConfig(enabled=True, schedule="0 3 * * *")
    kwargs = snapshot_age_alarm(settings, alarm_actions=["arn:aws:sns:us-east-1:123456789012:ops"])
    assert kwargs["Threshold"] == (24 + 1) * 3600
    assert kwargs["MetricName"] == "SnapshotAgeSeconds"
    assert kwargs["TreatMissingData"] == "breaching"
    with mock_aws():
        cloudwatch = boto3.client("cloudwatch", region_name="us-east-1")
        cloudwatch.put_metric_alarm(**kwargs)
        [alarm] = cloudwatch.describe_alarms(AlarmNames=[kwargs["AlarmName"]])["MetricAlarms"]
    assert alarm["Threshold"] == 90000.0
    assert alarm["ComparisonOperator"] == "GreaterThanThreshold"


def test_an_interval_schedule_sets_the_threshold_too():
    kwargs = snapshot_age_alarm(SnapshotsConfig(schedule="6h"), grace=timedelta(minutes=30))
    assert kwargs["Threshold"] == 6.5 * 3600


@pytest.mark.parametrize(
    ("schedule", "allowed_hours"),
    [
        ("every 12h", 12 + 1),
        (7200, 2 + 1),  # deprecated seconds
        ({"every": "1d"}, 24 + 1),
        ("0 3 * * 1-5", 72 + 1),  # Friday to Monday
        ({"cron": "0 3 * * *", "timezone": "Europe/Paris"}, 24 + 1 + 1),  # DST hour
    ],
)
def test_the_alarm_allows_the_longest_gap_of_every_schedule_form(schedule, allowed_hours):
    settings = SnapshotsConfig(enabled=True, schedule=schedule)
    kwargs = snapshot_age_alarm(settings)
    assert kwargs["Threshold"] == allowed_hours * 3600
    assert str(settings.schedule) in kwargs["AlarmDescription"]


def test_listing_prints_one_row_per_snapshot():
    out = io.StringIO()
    rows = print_snapshots(
        [snap("snap-1", 50, position="2026-06-08.jsonl:4096"), snap("snap-2", 1, "pending")],
        out,
        now=NOW,
    )
    text = out.getvalue().splitlines()
    assert rows == 2
    assert text[0].split() == [
        "SNAPSHOT",
        "VOLUME",
        "REGION",
        "STATE",
        "TAKEN",
        "(UTC)",
        "AGE",
        "JOURNAL",
        "POSITION",
    ]
    assert text[1].split() == [
        "snap-1",
        "vol-0123456789abcdef0",
        "us-east-1",
        "completed",
        "2026-06-08",
        "10:00:00",
        "2d2h",
        "2026-06-08.jsonl:4096",
    ]
    assert "pending 40%" in text[2]


def test_an_empty_listing_says_so():
    out = io.StringIO()
    assert print_snapshots([], out) == 0
    assert "no snapshots" in out.getvalue()
