"""The generated IAM policies allow every AWS call the product makes, for the role that makes
it, and grant nothing no flow exercises (unless `iam.NOT_EXERCISED` says why).

One moto world, configured with every optional section (iam/example-config.yaml), runs a
representative flow of every feature through its real entry point while `Recorder` notes each
call: bootstrap-aws (operator), the daemon (backup, SSE-KMS, delete, metrics, SNS + SES alert,
DLQ sampling, volume encryption check), reconcile, retention, gc, scrub with a heal, two
snapshots with retention and a cross-region copy, backup-restore list / restore --to DIR /
verify / snapshots (agent), then restore --to-s3, share, reindex, alarms, dashboard,
mount-snapshot --no-mount and the detach and delete it prints (operator).
"""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pytest
import structlog
import yaml
from botocore.awsrequest import AWSResponse
from moto import mock_aws

from agent.aws import build_clients
from agent.cli import agent as cli
from agent.cli import bootstrap, mount_snapshot
from agent.cli import restore as restore_cli
from agent.cli.common import ExitCode
from agent.config import load_config
from agent.operations.iam import (
    NOT_EXERCISED,
    granted_actions,
    iam_action,
    policy_document,
    trust_document,
)
from agent.records import VersionRecord
from agent.runtime.daemon import Daemon
from agent.storage.ledger import Ledger
from agent.storage.volume import Volume
from tests.support.aws import BUCKET, QUEUE_URL, REGION, TABLE
from tests.support.aws_hooks import Fault, inject
from tests.support.iam import (
    ACCOUNT,
    Call,
    Check,
    Recorder,
    UnknownOperation,
    checks,
    matching_statements,
)
from tests.support.waiting import wait_until

pytestmark = pytest.mark.xdist_group("iam-world")  # one moto world for the module's tests

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "iam" / "example-config.yaml"
COPY_REGION = "eu-west-1"
AZ = "us-east-1a"
STAGING = "company-recovery-shares"
RECOVERY = "company-recovery-area"  # the example's restore.recovery_buckets
ARCHIVE = "company-archive"  # the example's second, unversioned bucket
INVENTORY = "company-analytics"  # the example's inventory.bucket


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """The CLIs configure structlog and logging for the process: undo it after the test."""
    saved = structlog.get_config()
    handlers = list(logging.getLogger().handlers)
    yield
    structlog.configure(**saved)
    logging.getLogger().handlers[:] = handlers


def write_config(tmp_path: Path, root: Path, volume_id: str, kms_key: str) -> Path:
    raw = yaml.safe_load(EXAMPLE.read_text())
    raw["aws"]["kms_key_arns"] = [kms_key]
    raw["queue"].update(wait_time_seconds=0, retry_base_seconds=1)
    raw["storage"].update(
        root=str(root), volume_id=volume_id, min_free_bytes=0, compression_threads=1
    )
    raw["consumer"] = {"workers": 2, "drain_timeout": 10}
    raw["snapshots"]["retain"] = {"last": 1, "daily": 0, "weekly": 0}
    raw["metrics"].update(instance_id="i-0iamtest", prometheus=None)
    raw["retention"] = {"keep_last_versions": 1}
    raw["scrub"] = {"share_per_run": 1.0}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def send_event(sqs: Any, name: str, key: str, version: str | None, size: int = 0) -> None:
    obj: dict[str, Any] = {"key": key, "size": size, "sequencer": "00B1"}
    if version:
        obj["versionId"] = version
    record = {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": REGION,
        "eventTime": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "eventName": name,
        "s3": {"bucket": {"name": BUCKET, "arn": f"arn:aws:s3:::{BUCKET}"}, "object": obj},
    }
    sqs.send_message(QueueUrl=QUEUE_URL, MessageBody=json.dumps({"Records": [record]}))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Recorder, Path, Any]]:
    """Every flow of the product run once against moto; the recorded calls and the config."""
    tmp_path = tmp_path_factory.mktemp("iam")
    with pytest.MonkeyPatch.context() as mp:
        for name, value in {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_SESSION_TOKEN": "testing",
            "AWS_DEFAULT_REGION": REGION,
            "AWS_EC2_METADATA_DISABLED": "true",
            "MOTO_EC2_LOAD_DEFAULT_AMIS": "false",
        }.items():
            mp.setenv(name, value)
        mp.delenv("AWS_ENDPOINT_URL", raising=False)
        saved = structlog.get_config()
        handlers = list(logging.getLogger().handlers)
        try:
            with mock_aws(), Recorder().installed() as recorder:
                yield recorder, *run_every_flow(recorder, tmp_path)
        finally:
            structlog.configure(**saved)
            logging.getLogger().handlers[:] = handlers


def run_every_flow(recorder: Recorder, tmp_path: Path) -> tuple[Path, Any]:
    s3 = boto3.client("s3", region_name=REGION)
    ec2 = boto3.client("ec2", region_name=REGION)
    s3.create_bucket(Bucket=BUCKET)
    s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    s3.create_bucket(Bucket=ARCHIVE)
    s3.create_bucket(Bucket=RECOVERY)
    s3.create_bucket(Bucket=INVENTORY)
    s3.put_object(Bucket=ARCHIVE, Key="old.txt", Body=b"before any event: reconcile finds it")
    volume_id = ec2.create_volume(AvailabilityZone=AZ, Size=1, Encrypted=True)["VolumeId"]
    kms_key = boto3.client("kms", region_name=REGION).create_key()["KeyMetadata"]["Arn"]
    instance = ec2.run_instances(
        ImageId="ami-12c6146b",
        MinCount=1,
        MaxCount=1,
        Placement={"AvailabilityZone": AZ},
    )["Instances"][0]["InstanceId"]
    root = tmp_path / "backups"
    root.mkdir()
    Volume(root).initialise("vol-iam")
    path = write_config(tmp_path, root, volume_id, kms_key)
    config = load_config(path)
    out = io.StringIO()

    with recorder.role("operator"):
        assert bootstrap.main(["--config", str(path)]) == 0
    sqs = boto3.client("sqs", region_name=REGION)
    sqs.purge_queue(QueueUrl=QUEUE_URL)  # the notification's s3:TestEvent

    with recorder.role("agent"):
        run_the_daemon(recorder, config, s3, sqs)
        grow_the_volume(config)
        with recorder.quiet():  # gone without an event reaching the agent: reconcile notices
            s3.delete_object(Bucket=ARCHIVE, Key="new.txt")
        for command in ("reconcile", "retention", "gc", "inventory"):
            assert cli.main([command, "--config", str(path)]) == ExitCode.OK, command
        with recorder.quiet():
            corrupt_copy_of(root, config, "kms.txt")  # scrub heals it from S3
        assert cli.main(["scrub", "--config", str(path)]) == ExitCode.OK
        assert cli.main(["snapshot", "--config", str(path)]) == ExitCode.OK
        assert cli.main(["snapshot", "--config", str(path)]) == ExitCode.OK  # + retention
        target = tmp_path / "restored"
        for argv in (
            ["list"],
            ["restore", "--source-bucket", BUCKET, "--all", "--to", str(target)],
            ["verify"],
            ["snapshots"],
        ):
            assert restore_cli.main([argv[0], "--config", str(path), *argv[1:]], out=out) == 0

    with recorder.role("operator"):
        to_s3 = ["restore", "--config", str(path), "--source-bucket", BUCKET, "--all", "--to-s3"]
        to_s3 += ["--to-prefix", "restored/"]
        assert restore_cli.main(to_s3, out=out) == 0
        elsewhere = [*to_s3[:-2], "--bucket", RECOVERY]  # the README's recovery-area restore
        assert restore_cli.main(elsewhere, out=out) == 0
        fleet = [*to_s3[:-1], "fleet/", "--fleet", "--job", "iam-job"]  # the claim items
        assert restore_cli.main(fleet, out=out) == 0
        assert restore_cli.main([*fleet, "--status"], out=out) == 0
        share = ["share", "--config", str(path), "--source-bucket", BUCKET, "--key", "a.txt"]
        assert restore_cli.main(share, out=out) == 0
        with recorder.quiet():
            staged = s3.list_objects_v2(Bucket=STAGING)["Contents"][0]["Key"]
        # the presigned URL is signed by the operator: its GET is authorised against them
        recorder.add("operator", "s3", REGION, "GetObject", Bucket=STAGING, Key=staged)
        for command in ("reindex", "alarms", "dashboard"):
            assert cli.main([command, "--config", str(path)]) == ExitCode.OK, command
        audit = ["audit", "--config", str(path), "--cloudwatch"]
        assert restore_cli.main(audit, out=out) == 0
        with recorder.quiet():
            [snapshot] = ec2.describe_snapshots(
                Filters=[{"Name": "tag:backup-agent:managed", "Values": ["true"]}]
            )["Snapshots"]
        mount = [snapshot["SnapshotId"], "--config", str(path), "--instance-id", instance]
        assert mount_snapshot.main([*mount, "--az", AZ, "--no-mount"]) == 0
        with recorder.quiet():
            [restored] = ec2.describe_volumes(
                Filters=[{"Name": "tag-key", "Values": ["backup-agent:restore-of"]}]
            )["Volumes"]
        # when done, the operator runs the detach and delete mount-snapshot prints
        ec2.detach_volume(VolumeId=restored["VolumeId"], InstanceId=instance)
        ec2.delete_volume(VolumeId=restored["VolumeId"])
    return path, config


def grow_the_volume(config: Any) -> None:
    """storage.auto_grow: the grower's ModifyVolume and DescribeVolumesModifications, on a
    volume it finds full (the filesystem step is root's, with no AWS call)."""
    from agent.storage.grow import GrowState, VolumeGrower
    from tests.support.clock import FakeClock

    assert config.storage.volume_id is not None
    grower = VolumeGrower(
        build_clients(config).ec2(),
        config.storage.auto_grow,
        volume_id=lambda: config.storage.volume_id,
        root=config.storage.root,
        state_dir=config.storage.root.parent / "state",
        alert=lambda _subject, _detail: None,
        clock=FakeClock(),
        usage=lambda _root: (1 << 30, 1 << 30),
    )
    assert grower.step() is GrowState.FILESYSTEM  # moto: completed at once


def run_the_daemon(recorder: Recorder, config: Any, s3: Any, sqs: Any) -> None:
    daemon = Daemon(config, build_clients(config))
    # one retryable failure: the message is hidden for a back-off (ChangeMessageVisibility)
    retried = inject(daemon.clients.s3, Fault("GetObject", "SlowDown", status=503, times=1))
    daemon.check_volume_encryption()
    daemon.start(daemon.wait_for_volume())
    ledger = Ledger(boto3.client("dynamodb", region_name=REGION), TABLE)
    try:
        with recorder.quiet():
            first = s3.put_object(Bucket=BUCKET, Key="a.txt", Body=b"a" * 1000)["VersionId"]
            second = s3.put_object(  # tags: GetObjectVersionTagging
                Bucket=BUCKET, Key="a.txt", Body=b"b" * 1000, ContentType="text/plain",
                Tagging="team=web",
            )["VersionId"]  # fmt: skip
            # restored with its tags by `restore --all`: a key of one version, so which
            # a.txt record is newest (moto's events carry no sequencer) cannot decide it
            tagged = s3.put_object(
                Bucket=BUCKET, Key="tagged.txt", Body=b"t" * 100, Tagging="team=web"
            )["VersionId"]
            key_arn = config.aws.kms_key_arns[0]
            s3.put_object(
                Bucket=BUCKET,
                Key="kms.txt",
                Body=b"k" * 1000,
                ServerSideEncryption="aws:kms",
                SSEKMSKeyId=key_arn,
            )
            # real S3 events carry the versionId; moto's do not
            send_event(sqs, "ObjectCreated:Put", "a.txt", first, 1000)
            send_event(sqs, "ObjectCreated:Put", "a.txt", second, 1000)
            send_event(sqs, "ObjectCreated:Put", "tagged.txt", tagged, 100)
            s3.put_object(Bucket=ARCHIVE, Key="new.txt", Body=b"n")
            s3.put_object(Bucket=BUCKET, Key="gone.txt", Body=b"g")
            wait_until(lambda: ledger.latest(BUCKET, "gone.txt") is not None)
            marker = s3.delete_object(Bucket=BUCKET, Key="gone.txt")["VersionId"]
            send_event(sqs, "ObjectRemoved:DeleteMarkerCreated", "gone.txt", marker)
            wait_until(
                lambda: (
                    ledger.latest(BUCKET, "kms.txt") is not None
                    and len(ledger.versions(BUCKET, "a.txt")) >= 2
                    # the tagged version itself: moto's own events for a.txt (no versionId)
                    # can make two versions before its hand-made event is handled
                    and ledger.get_version(BUCKET, "a.txt", f"v:{second}") is not None
                    and ledger.get_version(BUCKET, "tagged.txt", f"v:{tagged}") is not None
                    and (ledger.latest(BUCKET, "gone.txt") or _Live()).deleted
                    and ledger.latest(ARCHIVE, "new.txt") is not None
                ),
                timeout=20,
            )
        assert retried.injected == 1
        assert daemon.monitoring is not None
        daemon.alert("IAM test", "an operational alert: SNS and SES")
        daemon.monitoring.sample_queues()
        daemon.monitoring.publish_metrics()
    finally:
        daemon.stop()  # flushes the metrics and the alert


class _Live:
    deleted = False


def corrupt_copy_of(root: Path, config: Any, key: str) -> None:
    record = Ledger(boto3.client("dynamodb", region_name=REGION), TABLE).latest(BUCKET, key)
    assert record is not None and record.sha256
    Volume(root).copy_path(record.sha256).write_bytes(b"not zstd")


# -- the proofs ---------------------------------------------------------------------------


def role_policy(config: Any, role: str) -> dict[str, Any]:
    return policy_document(config, role=role)


def test_every_call_of_every_feature_is_allowed_for_the_role_that_makes_it(world):
    recorder, _path, config = world
    denied: list[tuple[str, Check]] = []
    unknown: list[str] = []
    for call in recorder.calls:
        try:
            for check in checks(call):
                if not matching_statements(role_policy(config, call.role), check):
                    denied.append((call.role, check))
        except UnknownOperation as exc:
            unknown.append(str(exc))
    assert unknown == []
    assert denied == []


def test_every_flow_ran_and_made_the_calls_it_stands_for(world):
    recorder, _path, _config = world
    made = {(c.role, c.service, c.operation) for c in recorder.calls}
    expected = {
        ("agent", "s3", "GetObject"),
        ("agent", "s3", "GetObjectTagging"),
        ("agent", "s3", "ListObjectVersions"),
        ("agent", "s3", "HeadObject"),
        ("agent", "s3", "ListObjectsV2"),
        ("agent", "sqs", "ChangeMessageVisibility"),
        ("agent", "dynamodb", "DeleteItem"),
        ("agent", "dynamodb", "UpdateItem"),
        ("agent", "monitoring", "PutMetricData"),
        ("agent", "sns", "Publish"),
        ("agent", "ses", "SendEmail"),
        ("agent", "sqs", "GetQueueUrl"),
        ("agent", "ec2", "CreateSnapshot"),
        ("agent", "ec2", "CopySnapshot"),
        ("agent", "ec2", "DeleteSnapshot"),
        ("agent", "ec2", "DescribeVolumes"),
        ("operator", "s3", "PutObject"),
        ("operator", "s3", "HeadObject"),
        ("operator", "s3", "PutBucketLifecycleConfiguration"),
        ("operator", "dynamodb", "CreateTable"),
        ("operator", "monitoring", "PutMetricAlarm"),
        ("operator", "monitoring", "PutDashboard"),
        ("operator", "ec2", "CreateVolume"),
        ("operator", "ec2", "AttachVolume"),
        ("operator", "ec2", "DetachVolume"),
        ("operator", "ec2", "DeleteVolume"),
        ("agent", "logs", "CreateLogStream"),
        ("agent", "logs", "PutLogEvents"),
        ("agent", "s3", "PutObject"),  # the inventory export
        ("operator", "logs", "CreateLogGroup"),
        ("operator", "logs", "PutRetentionPolicy"),
        ("operator", "logs", "PutMetricFilter"),
        ("operator", "logs", "PutLogEvents"),
        ("operator", "logs", "FilterLogEvents"),
    }
    assert expected - made == set()
    regions = {c.region for c in recorder.calls if c.operation == "DeleteSnapshot"}
    assert regions == {REGION, COPY_REGION}  # retention ran in both regions
    recovery_puts = [
        c for c in recorder.calls if c.operation == "PutObject" and c.params["Bucket"] == RECOVERY
    ]
    assert recovery_puts and all(c.role == "operator" for c in recovery_puts)


def test_restore_into_a_recovery_bucket_needs_it_configured(world):
    """restore --to-s3 --bucket B is allowed for the configured restore.recovery_buckets only."""
    recorder, _path, config = world
    into_recovery = [c for c in recorder.calls if c.params.get("Bucket") == RECOVERY]
    assert {c.operation for c in into_recovery} >= {"HeadObject", "PutObject"}
    policy = role_policy(config, "operator")
    assert all(matching_statements(policy, k) for c in into_recovery for k in checks(c))
    without = config.model_copy(
        update={"restore": config.restore.model_copy(update={"recovery_buckets": []})}
    )
    bare = policy_document(without, role="operator")
    puts = [c for c in into_recovery if c.operation == "PutObject"]
    assert puts and not any(matching_statements(bare, k) for c in puts for k in checks(c))


def test_tags_are_read_per_version_and_restored_with_put_object_tagging(world):
    """GetObjectTagging with a VersionId is s3:GetObjectVersionTagging, without one
    s3:GetObjectTagging (https://docs.aws.amazon.com/AmazonS3/latest/API/API_GetObjectTagging.html);
    an upload with the x-amz-tagging header needs s3:PutObjectTagging besides s3:PutObject
    (https://docs.aws.amazon.com/AmazonS3/latest/userguide/tagging-and-policies.html)."""
    recorder, _path, config = world
    reads = {
        iam_action(c.service, c.operation, c.params)
        for c in recorder.calls
        if c.operation == "GetObjectTagging"
    }
    assert reads == {"s3:GetObjectTagging", "s3:GetObjectVersionTagging"}
    assert all(c.role == "agent" for c in recorder.calls if c.operation == "GetObjectTagging")
    tagged = [c for c in recorder.calls if c.operation == "PutObject" and c.params.get("Tagging")]
    assert tagged and {c.params["Tagging"] for c in tagged} == {"team=web"}
    assert all(c.role == "operator" for c in tagged)
    policy = role_policy(config, "operator")
    for statement in policy["Statement"]:
        statement["Action"] = [a for a in statement["Action"] if a != "s3:PutObjectTagging"]
    assert all(not all(matching_statements(policy, k) for k in checks(c)) for c in tagged)
    without = config.model_copy(
        update={"storage": config.storage.model_copy(update={"record_tags": False})}
    )
    agent = granted_actions(policy_document(without))
    assert not {"s3:GetObjectTagging", "s3:GetObjectVersionTagging"} & agent


def test_every_granted_action_of_every_statement_is_exercised_or_explained(world):
    recorder, _path, config = world
    used: dict[str, set[tuple[str, str]]] = {"agent": set(), "operator": set()}
    for call in recorder.calls:
        policy = role_policy(config, call.role)
        for check in checks(call):
            for sid in matching_statements(policy, check):
                used[call.role].add((sid, check.action))
    for role, exercised in used.items():
        unused = [
            (s["Sid"], action)
            for s in role_policy(config, role)["Statement"]
            for action in s["Action"]
            if (s["Sid"], action) not in exercised and action not in NOT_EXERCISED
        ]
        assert unused == [], role


def test_the_agent_role_cannot_write_to_the_buckets_or_change_aws_resources(world):
    _recorder, _path, config = world
    policy = role_policy(config, "agent")
    agent = granted_actions(policy)
    forbidden = {
        "s3:DeleteObject",
        "s3:CreateBucket",
        "dynamodb:CreateTable",
        "dynamodb:DeleteTable",
        "sqs:CreateQueue",
        "sqs:SetQueueAttributes",
        "cloudwatch:PutMetricAlarm",
        "cloudwatch:PutDashboard",
        "ec2:CreateVolume",
        "ec2:AttachVolume",
    }
    assert agent & forbidden == set()
    # s3:PutObject only into the inventory export's prefix, never a backed-up bucket
    puts = [
        r for st in policy["Statement"] if "s3:PutObject" in st["Action"] for r in st["Resource"]
    ]
    assert puts == [f"arn:aws:s3:::{INVENTORY}/backup-agent-inventory/*"]
    assert not any(r.startswith(f"arn:aws:s3:::{b}") for r in puts for b in config.buckets)


def test_denials_are_detected_a_policy_without_a_statement_fails(world):
    """The check is not vacuous: drop one statement and its calls are denied."""
    recorder, _path, config = world
    policy = role_policy(config, "agent")
    policy["Statement"] = [
        s for s in policy["Statement"] if s["Sid"] != "ExpireOnlyManagedSnapshots"
    ]
    deletes = [c for c in recorder.calls if c.operation == "DeleteSnapshot"]
    assert deletes and all(
        not matching_statements(policy, check) for c in deletes for check in checks(c)
    )
    # and a snapshot the agent did not tag could not be deleted even with the statement
    untagged = Call("agent", "ec2", REGION, "DeleteSnapshot", {"SnapshotId": "snap-1"})
    assert not any(matching_statements(role_policy(config, "agent"), c) for c in checks(untagged))


def test_policies_use_no_wildcard_actions_and_star_only_where_aws_has_no_resource():
    config = load_config(EXAMPLE)
    unscoped = {
        "cloudwatch:PutMetricData",
        "cloudwatch:ListMetrics",
        "ec2:DescribeVolumes",
        "ec2:DescribeSnapshots",
        "ec2:DescribeInstances",
        "ec2:DescribeVolumesModifications",
        "ses:GetIdentityVerificationAttributes",
        "ses:VerifyEmailIdentity",
    }
    for role in ("agent", "operator"):
        policy = policy_document(config, role=role)
        sids = [s["Sid"] for s in policy["Statement"]]
        assert len(sids) == len(set(sids)), role
        for statement in policy["Statement"]:
            assert all("*" not in action for action in statement["Action"]), statement
            if "*" in statement["Resource"]:
                assert set(statement["Action"]) <= unscoped, statement
            else:
                assert all(r.startswith("arn:aws:") for r in statement["Resource"])
    operator = policy_document(config, role="operator", restore_to_s3=False)
    assert "RestoreToS3" not in {s["Sid"] for s in operator["Statement"]}


def test_a_minimal_config_gets_no_statements_for_sections_it_does_not_use(tmp_path):
    minimal = tmp_path / "config.yaml"
    minimal.write_text(
        yaml.safe_dump(
            {
                "queue": {"url": QUEUE_URL},
                "buckets": [BUCKET],
                "storage": {"root": str(tmp_path)},
                "state": {"table": TABLE},
            }
        )
    )
    config = load_config(minimal)
    agent = granted_actions(policy_document(config))
    assert not {a for a in agent if a.startswith(("ec2:Create", "ec2:Delete", "sns:", "ses:"))}
    assert "kms:Decrypt" not in agent
    operator = {s["Sid"] for s in policy_document(config, role="operator")["Statement"]}
    assert not {"ShareStagedFiles", "CreateRestoreVolume", "BootstrapAlertTopic"} & operator


def test_committed_policies_match_the_example_config():
    def generate(*extra: str) -> dict[str, Any]:
        argv = [sys.executable, "-m", "agent.cli.agent", "iam-policy", "--config", str(EXAMPLE)]
        run = subprocess.run([*argv, *extra], cwd=REPO, capture_output=True, text=True, check=True)
        return json.loads(run.stdout)

    message = "regenerate the iam/*.json files (commands in iam/example-config.yaml)"
    committed = {p.name: json.loads(p.read_text()) for p in (REPO / "iam").glob("*.json")}
    assert committed == {
        "backup-agent-policy.json": generate(),
        "backup-agent-operator-policy.json": generate("--role", "operator"),
        "trust-policy.json": generate("--role-document"),
    }, message
    assert trust_document()["Statement"][0]["Principal"] == {"Service": "ec2.amazonaws.com"}


@pytest.mark.parametrize(
    ("operation", "action"),
    [
        ("DeleteMessageBatch", "sqs:DeleteMessage"),
        ("ChangeMessageVisibilityBatch", "sqs:ChangeMessageVisibility"),
        ("SendMessageBatch", "sqs:SendMessage"),
        ("ReceiveMessage", "sqs:ReceiveMessage"),
    ],
)
def test_sqs_batch_calls_need_the_permission_of_their_one_message_form(operation, action):
    assert iam_action("sqs", operation, {}) == action


# -- storage.auto_grow (issue 17) -------------------------------------------------------------


def _auto_grow_config(tmp_path: Path, volume_id: str | None) -> Any:
    raw = yaml.safe_load(EXAMPLE.read_text())
    raw["storage"] = {**raw["storage"], "auto_grow": {"enabled": True}}
    raw["storage"].pop("volume_id", None)
    raw["snapshots"]["enabled"] = False  # the auto-grow statement alone names the volume here
    if volume_id:
        raw["storage"]["volume_id"] = volume_id
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_config(path)


def test_auto_grow_may_resize_the_backup_volume_and_no_other(tmp_path):
    """The grower's real calls against moto, each checked against the generated policy."""
    from agent.config import AutoGrowConfig
    from agent.storage.grow import GrowState, VolumeGrower
    from tests.support.clock import FakeClock

    with mock_aws():
        ec2 = boto3.client("ec2", region_name=REGION)
        volume = ec2.create_volume(AvailabilityZone=AZ, Size=8)["VolumeId"]
        other = ec2.create_volume(AvailabilityZone=AZ, Size=8)["VolumeId"]
        config = _auto_grow_config(tmp_path, volume)
        policy = policy_document(config)
        recorder = Recorder()
        grower = VolumeGrower(
            ec2,
            AutoGrowConfig(enabled=True),
            volume_id=lambda: volume,
            root=tmp_path,
            state_dir=tmp_path / "state",
            alert=lambda _s, _d: None,
            clock=FakeClock(),
            usage=lambda _root: (8 << 30, 8 << 30),  # full
        )
        with recorder.installed(), recorder.role("agent"):
            assert grower.step() is GrowState.FILESYSTEM
    made = {c.operation for c in recorder.calls}
    assert {"ModifyVolume", "DescribeVolumesModifications", "DescribeVolumes"} <= made
    for call in recorder.calls:
        for check in checks(call):
            assert matching_statements(policy, check), check
    grow = next(s for s in policy["Statement"] if s["Sid"] == "GrowBackupVolume")
    assert grow["Resource"] == [f"arn:aws:ec2:{REGION}:123456789012:volume/{volume}"]
    elsewhere = Call("agent", "ec2", REGION, "ModifyVolume", {"VolumeId": other, "Size": 20})
    assert not any(matching_statements(policy, c) for c in checks(elsewhere))


def test_auto_grow_statements_only_when_on_and_only_with_the_volume_named(tmp_path):
    from agent.config import AutoGrowConfig
    from agent.errors import ConfigError

    off = _auto_grow_config(tmp_path, "vol-0123456789abcdef0")
    off = off.model_copy(
        update={"storage": off.storage.model_copy(update={"auto_grow": AutoGrowConfig()})}
    )
    assert not {"ec2:ModifyVolume", "ec2:DescribeVolumesModifications"} & granted_actions(
        policy_document(off)
    )
    with pytest.raises(ConfigError, match="auto-grow"):
        policy_document(_auto_grow_config(tmp_path, None))
    named = policy_document(_auto_grow_config(tmp_path, None), volume_id="vol-0123456789abcdef0")
    sids = {s["Sid"]: s for s in named["Statement"]}
    assert sids["WatchVolumeModifications"]["Resource"] == ["*"]
    assert sids["WatchVolumeModifications"]["Action"] == ["ec2:DescribeVolumesModifications"]
    assert sids["GrowBackupVolume"]["Resource"][0].endswith(":volume/vol-0123456789abcdef0")


# -- ledger transactions (Ledger.record_many) ---------------------------------------------------


def test_a_ledger_transaction_is_authorised_as_its_puts_and_the_policy_allows_it():
    """AWS authorises each action of a TransactWriteItems as its underlying operation
    (transaction-apis-iam.html): the agent's `dynamodb:PutItem` on the table covers
    `record_many`, no new action is granted."""
    config = load_config(EXAMPLE)
    policy = role_policy(config, "agent")
    record = VersionRecord(
        bucket=BUCKET,
        key="reports/q1.txt",
        version_token="v:v1",
        order_key="s:10",
        event_name="ObjectCreated:Put",
        event_time="2026-11-23T10:00:00+00:00",
        backup_time="2026-11-23T10:00:00+00:00",
        volume_id="vol-a",
        deleted=False,
        sha256="ab" * 32,
        size=10,
        stored_size=9,
    )
    # No moto of its own (the module's world may be running): DynamoDB's answer to a
    # transaction that commits is an empty JSON object.
    dynamodb = boto3.client(
        "dynamodb",
        region_name=REGION,
        endpoint_url="http://dynamodb.invalid",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    dynamodb.meta.events.register(
        "before-send.dynamodb.TransactWriteItems",
        lambda request, **_: AWSResponse(request.url, 200, {}, _Answer(b"{}")),
    )
    with Recorder().installed() as recorder, recorder.role("agent"):
        assert Ledger(dynamodb, config.state.table).record_many([record]) == [True]
    (call,) = recorder.calls
    assert call.operation == "TransactWriteItems"
    found = checks(call)
    assert {c.action for c in found} == {"dynamodb:PutItem"} and len(found) == 2
    assert all(matching_statements(policy, c) == ["Ledger"] for c in found)
    assert "dynamodb:TransactWriteItems" not in granted_actions(policy)

    # not vacuous: the same Put on another table is denied
    elsewhere = {**call.params["TransactItems"][0]["Put"], "TableName": "someone-elses"}
    other = Call(
        "agent", "dynamodb", REGION, "TransactWriteItems", {"TransactItems": [{"Put": elsewhere}]}
    )
    (denied,) = checks(other)
    assert denied.resource == f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/someone-elses"
    assert not matching_statements(policy, denied)


class _Answer:
    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self._body
