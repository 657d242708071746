"""restore --to-s3 gives back what S3 held besides the bytes (issue 15, item 5).

The backup records what GetObject answered (Content-Type, Content-Encoding, Content-Language,
Content-Disposition, Cache-Control, Expires, x-amz-meta-*:
https://docs.aws.amazon.com/AmazonS3/latest/API/API_GetObject.html) and GetObjectTagging's tag
set (https://docs.aws.amazon.com/AmazonS3/latest/API/API_GetObjectTagging.html); the restore
sends them back with PutObject, the tags as its URL-encoded x-amz-tagging header
(https://docs.aws.amazon.com/AmazonS3/latest/API/API_PutObject.html), or with
CreateMultipartUpload, which takes the same headers, metadata and tagging
(https://docs.aws.amazon.com/AmazonS3/latest/API/API_CreateMultipartUpload.html).
"""

from __future__ import annotations

import gzip
import io
import json
import os
import time
from datetime import UTC, datetime
from typing import Any

import pytest

import agent.cli.restore as restore_module
from agent.cli.restore import main
from agent.events import ObjectEvent, parse_message
from agent.pipeline.consumer import Consumer
from agent.records import METADATA_MAX_BYTES, VersionRecord, metadata_size
from agent.restore.plan import RestoreScope, plan
from agent.restore.restorer import Restorer
from agent.restore.source import LedgerSource, Selector
from agent.restore.targets import (
    SHA256_METADATA,
    VERSION_METADATA,
    S3Target,
    Status,
    object_metadata,
)
from agent.runtime.wiring import compression_settings, consumer_settings
from agent.storage.ledger import Ledger
from tests.support.aws import BUCKET, TABLE
from tests.support.aws_hooks import record_calls
from tests.support.backed_up import write_config
from tests.support.events import notification, s3_record
from tests.support.service import make_service

RECOVERY = "recovery-area"
PAGE = gzip.compress(b"<html><body>the site</body></html>" * 50)
WEBSITE: dict[str, Any] = {
    "ContentType": "text/html",
    "ContentEncoding": "gzip",
    "ContentLanguage": "en-GB",
    "ContentDisposition": 'inline; filename="index.html"',
    "CacheControl": "public, max-age=600",
    "Expires": datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC),
    "Metadata": {"owner": "web team", "release": "2026.11"},
}
TAGS = "team=web&classification=public%20site"
HEADERS = (
    "ContentType",
    "ContentEncoding",
    "ContentLanguage",
    "ContentDisposition",
    "CacheControl",
    "ExpiresString",
)


def what_s3_serves(s3: Any, bucket: str, key: str) -> dict[str, Any]:
    head = s3.head_object(Bucket=bucket, Key=key)
    tags = s3.get_object_tagging(Bucket=bucket, Key=key)["TagSet"]
    user = {k: v for k, v in head["Metadata"].items() if not k.startswith("backup-agent-")}
    return {
        **{name: head.get(name) for name in HEADERS},
        "Metadata": user,
        "Tags": sorted((t["Key"], t["Value"]) for t in tags),
        "Body": s3.get_object(Bucket=bucket, Key=key)["Body"].read(),
    }


def restore_cli(config_path, *args: str) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main([args[0], "--config", str(config_path), *args[1:]], out=out, err=err)
    return code, out.getvalue() + err.getvalue()


@pytest.fixture
def config_path(tmp_path, backup_root):
    return write_config(
        tmp_path / "config.yaml",
        backup_root,
        restore={"workers": 1, "recovery_buckets": [RECOVERY]},
    )


def back_up_through_the_pipeline(aws, config, volume, key: str) -> None:
    """S3's own notification → SQS → the consumer → BackupService, as the daemon runs it."""
    service = make_service(aws, volume, compression=compression_settings(config))
    consumer = Consumer(aws.sqs, service.process, consumer_settings(config))
    consumer.start()
    try:
        ledger = Ledger(aws.dynamodb, TABLE)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and ledger.latest(BUCKET, key) is None:
            time.sleep(0.05)
    finally:
        consumer.stop(5)
    assert ledger.latest(BUCKET, key) is not None


def test_a_website_object_comes_back_as_s3_served_it(aws, config, volume, config_path):
    aws.s3.put_object(Bucket=BUCKET, Key="site/index.html", Body=PAGE, Tagging=TAGS, **WEBSITE)
    original = what_s3_serves(aws.s3, BUCKET, "site/index.html")
    back_up_through_the_pipeline(aws, config, volume, "site/index.html")
    aws.s3.create_bucket(Bucket=RECOVERY)

    code, output = restore_cli(
        config_path, "restore", "--key", "site/index.html", "--to-s3",
        "--bucket", RECOVERY, "--to-prefix", "restored/",
    )  # fmt: skip

    assert code == 0, output
    restored = what_s3_serves(aws.s3, RECOVERY, "restored/site/index.html")
    assert restored == original
    assert original["ContentType"] == "text/html" and original["ContentEncoding"] == "gzip"
    assert original["Tags"] == [("classification", "public site"), ("team", "web")]
    agent = aws.s3.head_object(Bucket=RECOVERY, Key="restored/site/index.html")["Metadata"]
    assert agent[SHA256_METADATA] and VERSION_METADATA in agent  # the agent's keys merged in

    again, output = restore_cli(
        config_path, "restore", "--key", "site/index.html", "--to-s3", "--json",
        "--bucket", RECOVERY, "--to-prefix", "restored/",
    )  # fmt: skip
    assert again == 0 and '"status": "unchanged"' in output


def created(aws, key: str, body: bytes, **put: Any) -> ObjectEvent:
    response = aws.s3.put_object(Bucket=BUCKET, Key=key, Body=body, **put)
    fields = {"size": len(body), "eTag": response["ETag"].strip('"'), "sequencer": "0A"}
    (event,) = parse_message(notification(s3_record(key, **fields))).events
    return event


def test_a_multipart_restore_carries_them_on_create_multipart_upload(aws, volume):
    body = os.urandom((5 << 20) + 4321)
    service = make_service(aws, volume)
    service.process(created(aws, "video.mp4", body, Tagging=TAGS, **WEBSITE))
    original = what_s3_serves(aws.s3, BUCKET, "video.mp4")
    calls = record_calls(aws.s3)
    target = S3Target(aws.s3, volume, prefix="r/", multipart_threshold=1 << 20, part_size=5 << 20)
    source = LedgerSource(Ledger(aws.dynamodb, TABLE))

    summary = Restorer(target, workers=1).run(
        plan(source, BUCKET, RestoreScope(key="video.mp4"), Selector())
    )

    assert [r.status for r in summary.results] == [Status.RESTORED]
    (create,) = calls.of("CreateMultipartUpload")
    assert create["Tagging"] == "team=web&classification=public%20site"
    assert create["ContentType"] == "text/html" and create["Metadata"]["owner"] == "web team"
    assert what_s3_serves(aws.s3, BUCKET, "r/video.mp4") == original


def test_list_json_shows_them(aws, volume, config_path):
    service = make_service(aws, volume)
    service.process(created(aws, "site/index.html", PAGE, Tagging=TAGS, **WEBSITE))
    service.process(created(aws, "plain.bin", b"just bytes"))

    code, output = restore_cli(config_path, "list", "--json")

    assert code == 0, output
    rows = {row["key"]: row for row in map(json.loads, output.splitlines())}
    expected = {
        "content_type": "text/html",
        "content_encoding": "gzip",
        "content_language": "en-GB",
        "content_disposition": 'inline; filename="index.html"',
        "cache_control": "public, max-age=600",
        "expires": "Tue, 06 May 2031 07:08:09 GMT",
        "metadata": {"owner": "web team", "release": "2026.11"},
        "tags": {"team": "web", "classification": "public site"},
    }
    assert {name: rows["site/index.html"][name] for name in expected} == expected
    assert rows["plain.bin"]["metadata"] == {} and rows["plain.bin"]["tags"] == {}
    assert rows["plain.bin"]["content_encoding"] is None


def test_share_stages_with_the_recorded_type_and_encoding(aws, volume, tmp_path, backup_root):
    service = make_service(aws, volume)
    service.process(created(aws, "site/index.html", PAGE, Tagging=TAGS, **WEBSITE))
    service.process(
        created(aws, "report.pdf", b"%PDF", ContentDisposition='attachment; filename="Q1.pdf"')
    )
    path = write_config(
        tmp_path / "share.yaml", backup_root, restore={"staging_bucket": "company-shares"}
    )
    aws.s3.create_bucket(Bucket="company-shares")

    staged = {}
    for key in ("site/index.html", "report.pdf"):
        code, output = restore_cli(path, "share", "--key", key, "--json")
        assert code == 0, output
        staged[key] = json.loads(output.splitlines()[0])["staged"].removeprefix(
            "s3://company-shares/"
        )

    page = aws.s3.head_object(Bucket="company-shares", Key=staged["site/index.html"])
    assert page["ContentType"] == "text/html" and page["ContentEncoding"] == "gzip"
    assert page["ContentDisposition"] == "attachment; filename*=UTF-8''index.html"  # not inline
    report = aws.s3.head_object(Bucket="company-shares", Key=staged["report.pdf"])
    assert report["ContentDisposition"] == 'attachment; filename="Q1.pdf"'  # its own name


def test_the_same_bytes_with_other_metadata_are_not_taken_as_restored(aws, volume, config_path):
    """An object restored before metadata was recorded (or changed since) is not "unchanged"."""
    service = make_service(aws, volume)
    service.process(created(aws, "site/index.html", PAGE, Tagging=TAGS, **WEBSITE))
    aws.s3.copy_object(  # same bytes and eTag, the headers lost: what the old restore left
        Bucket=BUCKET,
        Key="site/index.html",
        CopySource={"Bucket": BUCKET, "Key": "site/index.html"},
        MetadataDirective="REPLACE",
        ContentType="binary/octet-stream",
    )

    code, output = restore_cli(config_path, "restore", "--key", "site/index.html", "--to-s3")
    assert code == 1 and "other headers or metadata; needs --overwrite" in output

    code, output = restore_cli(
        config_path, "restore", "--key", "site/index.html", "--to-s3", "--overwrite"
    )
    assert code == 0, output
    head = aws.s3.head_object(Bucket=BUCKET, Key="site/index.html")
    assert head["ContentType"] == "text/html" and head["Metadata"]["owner"] == "web team"


def test_a_record_made_before_them_restores_as_before(aws, volume, config_path, monkeypatch):
    """Records (journal lines, ledger items) written by the previous release carry none of
    them: the restore puts the bytes and the agent's keys only, and no Tagging header."""
    make_service(aws, volume).process(created(aws, "old.txt", b"old bytes", ContentType="a/b"))
    record = Ledger(aws.dynamodb, TABLE).latest(BUCKET, "old.txt")
    items = aws.dynamodb.query(
        TableName=TABLE,
        KeyConditionExpression="pk = :pk",
        ExpressionAttributeValues={":pk": {"S": f"{BUCKET}/old.txt"}},
    )["Items"]
    for item in items:  # as the previous release wrote them
        for name in ("content_type", "metadata", "tags"):
            item.pop(name)
        aws.dynamodb.put_item(TableName=TABLE, Item=item)
    monkeypatch.setattr(restore_module, "build_clients", lambda _config: aws)
    calls = record_calls(aws.s3)

    code, output = restore_cli(
        config_path, "restore", "--key", "old.txt", "--to-s3", "--to-prefix", "again/"
    )

    assert code == 0, output
    (put,) = calls.of("PutObject")
    assert "Tagging" not in put and "ContentType" not in put
    assert set(put["Metadata"]) == {SHA256_METADATA, VERSION_METADATA}
    assert record is not None and record.sha256 == put["Metadata"][SHA256_METADATA]


def test_the_objects_own_metadata_comes_first_within_s3s_2kb():
    """S3 refuses more than 2 KB of user metadata in all
    (https://docs.aws.amazon.com/AmazonS3/latest/userguide/UsingMetadata.html): an object
    that used nearly all of it keeps it, and the agent's keys that would not fit stay out."""
    record = VersionRecord(
        bucket=BUCKET, key="k", version_token="v:1", order_key="s1",
        event_name="ObjectCreated:Put", event_time="t", backup_time="t", volume_id="vol",
        version_id="1", sha256="a" * 64,
    )  # fmt: skip
    roomy = object_metadata(record, {"owner": "ann"})
    assert roomy == {"owner": "ann", SHA256_METADATA: "a" * 64, VERSION_METADATA: "1"}
    full = {"big": "x" * (METADATA_MAX_BYTES - 3 - 40)}
    tight = object_metadata(record, full)
    assert tight["big"] == full["big"] and metadata_size(tight) <= METADATA_MAX_BYTES
    assert SHA256_METADATA not in tight and tight.get(VERSION_METADATA) == "1"
