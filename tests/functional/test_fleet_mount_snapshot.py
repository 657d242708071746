"""`backup-mount-snapshot --key K [--version V | --at T]` in a fleet (moto DynamoDB + EC2).

The ledger names the volume holding the version; the snapshot chosen is that volume's
newest completed one taken after the version was stored (agent/snapshots/holding.py).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.cli.mount_snapshot import main
from agent.snapshots.records import MANAGED_TAG, TAKEN_AT_TAG, VOLUME_TAG, tag_list
from agent.storage.volume import Volume
from tests.support.backed_up import write_config
from tests.support.lifecycle import created, enable_versioning, put
from tests.support.service import make_service

AZ = "us-east-1a"
STORED_OLD = datetime(2026, 11, 20, 9, tzinfo=UTC)  # docs/r.txt's first version, on vol a
STORED_NEW = datetime(2026, 11, 28, 9, tzinfo=UTC)  # its second, on vol b
KEY = "docs/r.txt"


@pytest.fixture
def fleet(aws, tmp_path, monkeypatch):
    """Two members' volumes (named by their EC2 ids), a version on each, and snapshots."""
    monkeypatch.setenv("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")
    ec2 = aws.ec2()
    enable_versioning(aws)
    ids = {n: ec2.create_volume(AvailabilityZone=AZ, Size=8)["VolumeId"] for n in "ab"}
    versions = {}
    for n, (name, stored) in enumerate((("a", STORED_OLD), ("b", STORED_NEW))):
        root = tmp_path / name
        root.mkdir()
        volume = Volume(root)
        volume.initialise(ids[name])
        volume.open()
        service = make_service(aws, volume, volume_id=ids[name], clock=lambda s=stored: s)
        body = f"body {n}".encode()
        response = put(aws, KEY, body)
        event = created(KEY, response, len(body), at=stored, sequencer=f"{n:04X}")
        service.process(event)
        versions[name] = response["VersionId"]
    instance = ec2.run_instances(
        ImageId="ami-12c6146b", MinCount=1, MaxCount=1, Placement={"AvailabilityZone": AZ}
    )["Instances"][0]["InstanceId"]

    def snapshot(name: str, taken: datetime) -> str:
        tags = {MANAGED_TAG: "true", VOLUME_TAG: ids[name], TAKEN_AT_TAG: taken.isoformat()}
        return ec2.create_snapshot(
            VolumeId=ids[name],
            TagSpecifications=[{"ResourceType": "snapshot", "Tags": tag_list(tags)}],
        )["SnapshotId"]

    snaps = {
        "a-before": snapshot("a", STORED_OLD - timedelta(days=1)),
        "a-after": snapshot("a", STORED_OLD + timedelta(days=1)),
        "a-latest": snapshot("a", STORED_NEW + timedelta(days=1)),
        "b-before": snapshot("b", STORED_NEW - timedelta(hours=1)),
        "b-after": snapshot("b", STORED_NEW + timedelta(hours=6)),
    }
    config = write_config(tmp_path / "config.yaml", tmp_path / "a")
    return ec2, ids, versions, snaps, instance, config


def _mount(aws, fleet, *args: str) -> int:
    ec2, _ids, _versions, _snaps, instance, config = fleet
    argv = ["--json", "--key", KEY, "--config", str(config), "--instance-id", instance, *args]
    return main([*argv, "--dry-run"], ec2=ec2, dynamodb=aws.dynamodb)


def _found(capsys) -> dict:
    return json.loads(capsys.readouterr().out)


def test_the_current_version_is_found_on_the_volume_of_the_member_that_stored_it(
    aws, fleet, capsys
):
    _ec2, ids, versions, snaps, _instance, _config = fleet

    assert _mount(aws, fleet) == 0

    document = _found(capsys)
    found = document["found"]
    assert (found["volume_id"], found["version"]) == (ids["b"], versions["b"])
    assert found["snapshot_id"] == snaps["b-after"]  # b's, taken after the version was stored
    assert document["plan"]["snapshot_id"] == snaps["b-after"]
    assert document["plan"]["source_volume_id"] == ids["b"]


def test_an_older_version_by_id_or_time_is_found_on_the_other_volume(aws, fleet, capsys):
    _ec2, ids, versions, snaps, _instance, _config = fleet

    assert _mount(aws, fleet, "--version", versions["a"]) == 0
    by_id = _found(capsys)["found"]
    assert _mount(aws, fleet, "--at", (STORED_OLD + timedelta(days=2)).isoformat()) == 0
    by_time = _found(capsys)["found"]

    for found in (by_id, by_time):
        assert found["volume_id"] == ids["a"]
        assert found["snapshot_id"] == snaps["a-latest"]  # the newest of a's that holds it


def test_no_snapshot_taken_since_the_version_was_stored_is_an_error_naming_the_volume(
    aws, fleet, capsys
):
    ec2, ids, _versions, snaps, _instance, _config = fleet
    ec2.delete_snapshot(SnapshotId=snaps["b-after"])

    assert _mount(aws, fleet) == 1

    err = capsys.readouterr().err
    assert f"is on volume {ids['b']}" in err and "no completed snapshot of it taken since" in err


def test_a_key_never_backed_up_is_an_error(aws, fleet, capsys):
    ec2, _ids, _versions, _snaps, instance, config = fleet
    argv = ["--key", "docs/none", "--config", str(config), "--instance-id", instance]
    assert main([*argv, "--dry-run"], ec2=ec2, dynamodb=aws.dynamodb) == 1
    assert "no backup of this key" in capsys.readouterr().err


def test_a_snapshot_id_and_a_key_together_are_a_usage_error(aws, fleet, capsys):
    ec2, _ids, _versions, snaps, _instance, config = fleet
    with pytest.raises(SystemExit) as exited:
        main([snaps["a-after"], "--key", KEY, "--config", str(config)], ec2=ec2)
    assert exited.value.code == 2


def test_mount_snapshot_key_needs_a_config(aws, fleet, capsys, tmp_path: Path):
    ec2, _ids, _versions, _snaps, instance, _config = fleet
    code = main(["--key", KEY, "--instance-id", instance, "--dry-run"], ec2=ec2)
    assert code == 2 and "--config is needed" in capsys.readouterr().err
