"""`backup-agent check-config --online` against in-process moto, each problem injected."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from agent.cli.agent import main
from agent.cli.common import ExitCode
from agent.operations.online_check import queue_region
from agent.storage.ledger import table_definition
from tests.support.aws import BUCKET, QUEUE_URL, REGION, TABLE, bootstrapped_aws, make_config


def _config_file(tmp_path, root, **queue):
    raw = {
        "aws": {"region": REGION},
        "queue": {"url": QUEUE_URL, **queue},
        "buckets": [BUCKET],
        "storage": {"root": str(root), "min_free_bytes": 0},
        "state": {"table": TABLE},
        "logging": {"format": "json", "level": "WARNING"},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def _edit(path, change):
    file = Path(path)
    raw = yaml.safe_load(file.read_text())
    change(raw)
    file.write_text(yaml.safe_dump(raw))


def _check(path, capsys):
    code = main(["check-config", "--online", "--config", path])
    out, err = capsys.readouterr()
    return code, out, [line.strip() for line in err.splitlines()[1:]]


@pytest.fixture
def setup(volume, backup_root, tmp_path):
    with bootstrapped_aws(make_config(backup_root)) as clients:
        yield clients, _config_file(tmp_path, backup_root)


def test_a_bootstrapped_account_passes(setup, capsys):
    _clients, path = setup
    code, out, problems = _check(path, capsys)
    assert (code, problems) == (ExitCode.OK, [])
    assert f"{path}: OK (online)" in out
    assert f"buckets: {BUCKET}: versioning " in out


def test_missing_credentials_are_one_line(setup, capsys, monkeypatch, tmp_path):
    _clients, path = setup
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    code, _out, problems = _check(path, capsys)
    assert code == ExitCode.USAGE
    assert len(problems) == 1 and problems[0].startswith("aws: credentials: STS")


def test_receive_count_and_missing_redrive_policy(setup, capsys, backup_root, tmp_path):
    clients, _path = setup
    path = _config_file(tmp_path, backup_root, max_receive_count=7)
    code, _out, problems = _check(path, capsys)
    assert code == ExitCode.USAGE
    assert problems == [
        "queue.max_receive_count: 7, but the queue's redrive policy says 10"
        " (run bootstrap-aws, or set it to 10)"
    ]
    clients.sqs.set_queue_attributes(QueueUrl=QUEUE_URL, Attributes={"RedrivePolicy": ""})
    code, _out, problems = _check(path, capsys)
    assert any("has no redrive policy" in p for p in problems), problems


def test_a_missing_queue_and_a_region_that_disagrees(setup, capsys, backup_root, tmp_path):
    clients, path = setup
    clients.sqs.delete_queue(QueueUrl=QUEUE_URL)
    code, _out, problems = _check(path, capsys)
    assert code == ExitCode.USAGE
    assert problems[0].startswith(f"queue.url: {QUEUE_URL}: cannot read the queue")
    assert queue_region("https://sqs.eu-west-1.amazonaws.com/1/q") == "eu-west-1"
    assert queue_region("http://localhost:4566/000000000000/q") is None
    _edit(path, lambda raw: raw["aws"].update(region="eu-west-1"))
    _code, _out, problems = _check(path, capsys)
    assert "aws.region: eu-west-1, but queue.url is in us-east-1: set aws.region to us-east-1" in (
        problems
    )


def test_a_table_with_other_keys_or_none(setup, capsys):
    clients, path = setup
    clients.dynamodb.delete_table(TableName=TABLE)
    code, _out, problems = _check(path, capsys)
    assert code == ExitCode.USAGE and problems[0].startswith(f"state.table: {TABLE}: cannot")
    wrong = table_definition(TABLE)
    wrong["KeySchema"] = [{"AttributeName": "pk", "KeyType": "HASH"}]
    del wrong["GlobalSecondaryIndexes"]
    wrong["AttributeDefinitions"] = [{"AttributeName": "pk", "AttributeType": "S"}]
    clients.dynamodb.create_table(**wrong)
    _code, _out, problems = _check(path, capsys)
    assert any("not a backup-agent table" in p for p in problems), problems
    assert any("lacks the by-key index" in p for p in problems), problems


def test_bucket_notifications_missing_or_partial_and_an_unknown_bucket(
    setup, capsys, backup_root, tmp_path
):
    clients, path = setup
    arn = clients.sqs.get_queue_attributes(QueueUrl=QUEUE_URL, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    clients.s3.put_bucket_notification_configuration(
        Bucket=BUCKET,
        NotificationConfiguration={
            "QueueConfigurations": [{"QueueArn": arn, "Events": ["s3:ObjectCreated:*"]}]
        },
    )
    code, _out, problems = _check(path, capsys)
    assert code == ExitCode.USAGE
    assert problems == [
        f"buckets: {BUCKET}: the notification to the queue lacks s3:ObjectRemoved:*,"
        " s3:LifecycleExpiration:*, s3:ObjectRestore:Completed (run bootstrap-aws)"
    ]
    clients.s3.put_bucket_notification_configuration(Bucket=BUCKET, NotificationConfiguration={})
    _code, _out, problems = _check(path, capsys)
    assert problems == [
        f"buckets: {BUCKET}: no notification sends its events to {arn} (run bootstrap-aws)"
    ]
    _edit(path, lambda raw: raw.update(buckets=["no-such-bucket-here"]))
    _code, _out, problems = _check(path, capsys)
    assert len(problems) == 1 and problems[0].startswith("buckets: no-such-bucket-here: not")


def test_the_volume_without_marker_or_not_writable(setup, capsys, backup_root):
    _clients, path = setup
    if os.getuid() != 0:
        backup_root.chmod(0o555)
        try:
            _code, _out, problems = _check(path, capsys)
        finally:
            backup_root.chmod(0o755)
        assert len(problems) == 1 and "is not writable by this user" in problems[0]
    (backup_root / ".backup-agent-volume").unlink()
    code, _out, problems = _check(path, capsys)
    assert code == ExitCode.USAGE
    assert len(problems) == 1 and problems[0].startswith("storage.root: backup root")
