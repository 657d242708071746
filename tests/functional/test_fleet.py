"""The fleet on one queue, in-process against moto: membership, status --fleet."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from agent.cli.agent import main
from agent.cli.common import StatusCode
from agent.config import queue_name
from agent.fleet.heartbeat import Heartbeat, Identity
from agent.fleet.member import ACTIVE, STOPPED
from agent.fleet.registry import Registry
from agent.runtime.daemon import Daemon
from tests.functional.test_lifecycle_cli import write_config
from tests.support.aws import QUEUE_URL, TABLE, make_config
from tests.support.clock import FakeClock
from tests.support.waiting import wait_until


def _registry(aws) -> Registry:
    return Registry(aws.dynamodb, TABLE, queue_name(QUEUE_URL))


def test_a_daemon_joins_the_fleet_at_start_and_says_stopped_when_it_stops(aws, backup_root, volume):
    config = make_config(
        backup_root,
        metrics={"prometheus": None, "cloudwatch": False, "instance_id": "i-test"},
        schedules={"fleet-heartbeat": "10s"},
    )
    daemon = Daemon(config, aws)
    daemon.start(volume.read_marker())
    try:
        wait_until(lambda: _registry(aws).members()[0], what="the member registered")
        [member], bad = _registry(aws).members()
        assert bad == []
        assert member.volume_id == "vol-test" and member.state == ACTIVE
        assert member.interval_seconds == 10  # the schedule the job runs on
        assert member.member_id.endswith("/vol-test")  # off EC2: host name and volume
        assert 0 < (member.disk_used_ratio or 0) < 1
        assert daemon.monitoring is not None
        assert daemon.monitoring.jobs.run_now("fleet-heartbeat")
        [again], _ = _registry(aws).members()
        assert again.heartbeat >= member.heartbeat and again.started == member.started
    finally:
        daemon.stop()
    [left], _ = _registry(aws).members()
    assert left.state == STOPPED


def test_status_fleet_lists_members_and_flags_the_one_whose_heartbeat_stopped(
    aws, volume, backup_root, tmp_path, capsys
):
    config_file = write_config(tmp_path, backup_root)
    now = datetime.now(UTC)
    for name, age in (("i-live", 5), ("i-dead", 200)):
        clock = FakeClock(now)
        clock.advance(seconds=-age)
        Heartbeat(
            _registry(aws),
            lambda name=name: Identity(name, name, "vol-" + name, "us-east-1a", "1.0"),
            interval_seconds=30,
            clock=clock,
        ).beat()
    capsys.readouterr()  # the heartbeats' log lines

    code = main(["status", "--config", config_file, "--fleet", "--json"])
    report = json.loads(capsys.readouterr().out)

    assert code == StatusCode.DOWN
    assert [(m["member_id"], m["missing"]) for m in report["members"]] == [
        ("i-dead", True),
        ("i-live", False),
    ]
    assert [m["volume_id"] for m in report["members"]] == ["vol-i-dead", "vol-i-live"]
    [problem] = report["problems"]
    assert problem.startswith("i-dead: heartbeat missing")

    assert main(["status", "--config", config_file, "--fleet"]) == StatusCode.DOWN
    out = capsys.readouterr().out
    assert "fleet:       DOWN, 2 member(s)" in out
    assert "i-dead: HEARTBEAT MISSING, volume vol-i-dead" in out
    assert "i-live: active, volume vol-i-live" in out


def test_a_fleet_item_that_does_not_parse_is_reported_not_a_crash(
    aws, volume, backup_root, tmp_path, capsys
):
    config_file = write_config(tmp_path, backup_root)
    aws.dynamodb.put_item(
        TableName=TABLE,
        Item={
            "pk": {"S": "fleet#" + queue_name(QUEUE_URL)},
            "sk": {"S": "member#i-odd"},
            "member_id": {"S": "i-odd"},
            "heartbeat": {"S": "not a time"},
        },
    )
    code = main(["status", "--config", config_file, "--fleet", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == StatusCode.DOWN  # no member at all, and one item that is not one
    assert any("'i-odd'" in p for p in report["problems"])
