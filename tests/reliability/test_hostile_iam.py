"""Hostile IAM: a compromised instance (the agent's role) reaches for volumes other than the
backup volume, directly or through the operator's role. Each attempt is an API call turned
into the authorisations AWS makes (`tests/support/iam.py`) and evaluated against the policies
`backup-agent iam-policy` generates from iam/example-config.yaml.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.cli import agent as cli
from agent.cli.common import ExitCode
from agent.config import Config, load_config
from agent.errors import ConfigError
from agent.operations.iam import ROLES, policy_document
from agent.snapshots.mount import RESTORE_TAG
from agent.snapshots.records import MANAGED_TAG
from tests.support.iam import Call, checks, matching_statements, snapshot_arn, volume_arn

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "iam" / "example-config.yaml"
REGION = "us-east-1"
BACKUP_VOLUME = "vol-0123456789abcdef0"  # the example's storage.volume_id
VICTIM = "vol-0badc0ffee0000001"  # another team's database volume, same account
INSTANCE = "i-0123456789abcdef0"


def example_config(tmp_path: Path, **storage: Any) -> tuple[Path, Config]:
    raw = yaml.safe_load(EXAMPLE.read_text())
    raw["storage"].update(storage)
    raw["storage"] = {k: v for k, v in raw["storage"].items() if v is not None}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path, load_config(path)


def allowed(policy: dict[str, Any], call: Call) -> bool:
    """AWS allows a call when every authorisation it makes is granted by some statement."""
    return all(matching_statements(policy, check) for check in checks(call))


def create_snapshot(volume: str, **tags: str) -> Call:
    spec = [{"ResourceType": "snapshot", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}]
    return Call(
        "agent", "ec2", REGION, "CreateSnapshot", {"VolumeId": volume, "TagSpecifications": spec}
    )


def generated(path: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> dict[str, Any]:
    code = cli.main(["iam-policy", "--config", str(path), *extra])
    out = capsys.readouterr().out
    assert code == ExitCode.OK, out
    document: dict[str, Any] = json.loads(out)
    return document


def test_without_a_volume_id_a_snapshot_policy_is_refused_not_widened_to_every_volume(
    tmp_path, capsys
):
    path, config = example_config(tmp_path, volume_id=None)
    for role in ROLES:
        with pytest.raises(ConfigError, match=r"storage\.volume_id"):
            policy_document(config, role=role)
    assert cli.main(["iam-policy", "--config", str(path)]) == ExitCode.USAGE
    err = capsys.readouterr().err
    assert "storage.volume_id" in err and "--volume-id" in err


@pytest.mark.parametrize("given", ["config", "option"])
def test_the_agent_may_snapshot_the_backup_volume_and_no_other(tmp_path, capsys, given):
    if given == "config":
        path, _config = example_config(tmp_path)
        policy = generated(path, capsys)
    else:  # storage.volume_id unset (discovered at run time): named when the policy is made
        path, _config = example_config(tmp_path, volume_id=None)
        policy = generated(path, capsys, "--volume-id", BACKUP_VOLUME)
    assert allowed(policy, create_snapshot(BACKUP_VOLUME, **{MANAGED_TAG: "true"}))
    assert not allowed(policy, create_snapshot(VICTIM, **{MANAGED_TAG: "true"}))
    assert not allowed(policy, create_snapshot(VICTIM))
    # tags only at creation, and no tag on any volume (restore-of is the operator's)
    for resource, key in ((VICTIM, RESTORE_TAG), ("snap-0123456789abcdef0", MANAGED_TAG)):
        tag = Call(
            "agent",
            "ec2",
            REGION,
            "CreateTags",
            {"Resources": [resource], "Tags": [{"Key": key, "Value": "true"}]},
        )
        assert not allowed(policy, tag), resource


@pytest.mark.parametrize(
    "volume_id",
    ["vol-*", "*", "vol-0123456789abcdef0,vol-0badc0ffee0000001", "vol-0badc0ffee0000001"],
)
def test_a_volume_id_option_that_widens_or_contradicts_the_config_is_refused(
    tmp_path, capsys, volume_id
):
    path, _config = example_config(tmp_path)  # storage.volume_id: BACKUP_VOLUME
    assert cli.main(["iam-policy", "--config", str(path), "--volume-id", volume_id]) == 2
    assert "--volume-id" in capsys.readouterr().err


def test_the_operator_makes_volumes_only_from_snapshots_of_the_backup_volume(tmp_path, capsys):
    """Tagging a snapshot `managed` is in the agent's power: the tag alone must not be trusted."""
    path, _config = example_config(tmp_path)
    policy = generated(path, capsys, "--role", "operator")

    def create_volume(snapshot: str, parent: str, tags: dict[str, str]) -> Call:
        arn = snapshot_arn(REGION, snapshot)
        spec = [{"ResourceType": "volume", "Tags": [{"Key": RESTORE_TAG, "Value": snapshot}]}]
        return Call(
            "operator",
            "ec2",
            REGION,
            "CreateVolume",
            {"SnapshotId": snapshot, "AvailabilityZone": "us-east-1a", "TagSpecifications": spec},
            resource_tags={arn: tags},
            parent_volumes={arn: volume_arn(REGION, parent)},
        )

    managed = {MANAGED_TAG: "true"}
    assert allowed(policy, create_volume("snap-0000000000000000a", BACKUP_VOLUME, managed))
    assert not allowed(policy, create_volume("snap-0000000000000000b", VICTIM, managed))
    assert not allowed(policy, create_volume("snap-0000000000000000c", BACKUP_VOLUME, {}))


@pytest.mark.parametrize("operation", ["AttachVolume", "DetachVolume", "DeleteVolume"])
def test_the_operator_attaches_detaches_and_deletes_only_restore_volumes(
    tmp_path, capsys, operation
):
    path, _config = example_config(tmp_path)
    policy = generated(path, capsys, "--role", "operator")

    def on(volume: str, tags: dict[str, str]) -> Call:
        params = {"VolumeId": volume}
        if operation == "AttachVolume":
            params.update(InstanceId=INSTANCE, Device="/dev/sdf")
        arn = volume_arn(REGION, volume)
        attached = {arn: INSTANCE} if operation == "DetachVolume" else {}
        return Call(
            "operator",
            "ec2",
            REGION,
            operation,
            params,
            resource_tags={arn: tags},
            attached_to=attached,
        )

    restore = on("vol-0000000000000000a", {RESTORE_TAG: "snap-0000000000000000a"})
    assert allowed(policy, restore)
    assert not allowed(policy, on(BACKUP_VOLUME, {"Name": "backups"}))
    assert not allowed(policy, on(VICTIM, {}))
    # and the operator cannot put the tag on an existing volume to make it one
    tag = Call(
        "operator",
        "ec2",
        REGION,
        "CreateTags",
        {"Resources": [VICTIM], "Tags": [{"Key": RESTORE_TAG, "Value": "snap-0000000000000000a"}]},
    )
    assert not allowed(policy, tag)
