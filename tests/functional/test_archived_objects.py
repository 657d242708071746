"""Archived and unreadable objects: a state, recorded and reported, never a retried failure.

GetObject answers InvalidObjectState for a version in GLACIER, DEEP_ARCHIVE or an
Intelligent-Tiering archive tier ("Object is archived and inaccessible until restored",
https://docs.aws.amazon.com/AmazonS3/latest/API/API_GetObject.html; the error carries
StorageClass and AccessTier), and 400 InvalidRequest ("The object was stored using a form of
Server Side Encryption. The correct parameters must be provided to retrieve the object.") for
an SSE-C object read without its key
(https://docs.aws.amazon.com/AmazonS3/latest/userguide/ServerSideEncryptionCustomerKeys.html).
moto answers InvalidObjectState for StorageClass=GLACIER / DEEP_ARCHIVE as S3 does, but serves
SSE-C objects without the key and has no Intelligent-Tiering archive tiers: those two answers
are injected (docs/testing.md).
"""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from structlog.testing import capture_logs

from agent import order
from agent.cli.restore import main as restore_main
from agent.config import ReconcileConfig
from agent.errors import PermanentError
from agent.events import ObjectEvent, parse_message
from agent.history import current as history_current
from agent.lifecycle.context import Pacer
from agent.lifecycle.reconcile import Reconciler
from agent.pipeline.backup import BackupService, Outcome
from agent.pipeline.consumer import Consumer
from agent.records import VersionRecord, parse_time
from agent.restore.plan import RestoreScope, plan
from agent.restore.source import JournalSource, LedgerSource, Selector
from agent.runtime.wiring import consumer_settings
from agent.stats import Stats
from agent.storage.ledger import Ledger
from tests.support.aws import BUCKET, QUEUE_URL, TABLE, queue_counts
from tests.support.aws_hooks import Fault, inject, record_calls
from tests.support.backed_up import write_config
from tests.support.events import load_event, notification, s3_record
from tests.support.service import make_service
from tests.support.waiting import wait_until

SSE_C_MESSAGE = (
    "The object was stored using a form of Server Side Encryption. "
    "The correct parameters must be provided to retrieve the object."
)


@pytest.fixture
def versioned(aws):
    aws.s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    return aws


@pytest.fixture
def stats() -> Stats:
    return Stats()


@pytest.fixture
def service(versioned, volume, stats) -> BackupService:
    return make_service(versioned, volume, stats=stats)


def put(aws, key: str, body: bytes, **extra: Any) -> dict[str, Any]:
    response = aws.s3.put_object(Bucket=BUCKET, Key=key, Body=body, **extra)
    return {"eTag": response["ETag"].strip('"'), "versionId": response["VersionId"]}


def created(key: str, body: bytes, sequencer: str = "0A", **obj: Any) -> ObjectEvent:
    (event,) = parse_message(
        notification(s3_record(key, size=len(body), sequencer=sequencer, **obj))
    ).events
    return event


def restore_completed(
    key: str, body: bytes, version: dict[str, Any], at: datetime | None = None
) -> ObjectEvent:
    """s3-restore-completed.json (the documented shape) for this object (at `at`)."""
    document = load_event("s3-restore-completed.json")
    document["Records"][0]["s3"]["object"].update(
        key=key, size=len(body), eTag=version["eTag"], versionId=version["versionId"]
    )
    if at is not None:
        document["Records"][0]["eventTime"] = at.isoformat().replace("+00:00", "Z")
    (event,) = parse_message(json.dumps(document)).events
    return event


def drain(aws) -> None:
    """Delete what is in the queue (PurgeQueue works once a minute)."""
    while messages := aws.sqs.receive_message(
        QueueUrl=QUEUE_URL, MaxNumberOfMessages=10, WaitTimeSeconds=0
    ).get("Messages"):
        for message in messages:
            aws.sqs.delete_message(QueueUrl=QUEUE_URL, ReceiptHandle=message["ReceiptHandle"])


def journal_lines(volume) -> list[dict]:
    return [
        json.loads(line)
        for p in sorted(volume.journal_dir.glob("*.jsonl"))
        for line in p.read_text().splitlines()
    ]


# -- the backup outcome --------------------------------------------------------------------


@pytest.mark.parametrize("storage_class", ["GLACIER", "DEEP_ARCHIVE"])
def test_an_archived_version_is_recorded_as_archived_with_its_storage_class(
    versioned, service, volume, stats, storage_class
):
    version = put(versioned, "cold/ledger.csv", b"old numbers", StorageClass=storage_class)

    with capture_logs() as logs:
        result = service.process(created("cold/ledger.csv", b"old numbers", **version))

    assert result.outcome is Outcome.ARCHIVED
    assert result.copy is None
    record = result.record
    assert (record.unreadable, record.storage_class) == ("archived", storage_class)
    assert record.version_token == f"archived:v:{version['versionId']}"
    assert (record.deleted, record.sha256, record.version_id) == (
        False,
        None,
        version["versionId"],
    )
    assert Ledger(versioned.dynamodb, TABLE).latest(BUCKET, "cold/ledger.csv") == record
    assert journal_lines(volume) == [record.to_dict()]
    assert list(volume.objects_dir.rglob("*.zst")) == []
    assert stats.archived == {"archived": 1}
    (said,) = [e for e in logs if e["event"] == "backup.archived"]
    assert said["log_level"] == "warning" and said["storage_class"] == storage_class
    assert "restore it in S3 first" in said["what_to_do"]
    assert "ObjectRestore:Completed" in said["what_to_do"]


def test_the_same_archived_version_again_is_said_and_counted_once(
    versioned, service, volume, stats
):
    version = put(versioned, "cold/a.bin", b"a", StorageClass="GLACIER")
    event = created("cold/a.bin", b"a", **version)
    service.process(event)

    with capture_logs() as logs:
        again = service.process(event)

    assert again.outcome is Outcome.ARCHIVED
    assert len(journal_lines(volume)) == 1
    assert stats.archived == {"archived": 1}
    assert [e["event"] for e in logs if e["log_level"] != "debug"] == []


def test_an_intelligent_tiering_archive_tier_is_archived_with_its_access_tier(versioned, service):
    version = put(versioned, "it/deep.bin", b"deep", StorageClass="INTELLIGENT_TIERING")
    extra = {"StorageClass": "INTELLIGENT_TIERING", "AccessTier": "DEEP_ARCHIVE_ACCESS"}
    inject(versioned.s3, Fault("GetObject", "InvalidObjectState", status=403, extra=extra))

    result = service.process(created("it/deep.bin", b"deep", **version))

    assert result.outcome is Outcome.ARCHIVED
    assert result.record.storage_class == "INTELLIGENT_TIERING/DEEP_ARCHIVE_ACCESS"


def test_an_sse_c_object_is_recorded_with_its_own_reason(versioned, service, stats):
    version = put(versioned, "secret/c.bin", b"sealed")
    inject(versioned.s3, Fault("GetObject", "InvalidRequest", status=400, message=SSE_C_MESSAGE))

    with capture_logs() as logs:
        result = service.process(created("secret/c.bin", b"sealed", **version))

    assert result.outcome is Outcome.ARCHIVED
    assert (result.record.unreadable, result.record.storage_class) == ("sse-c", None)
    assert result.record.version_token == f"sse-c:v:{version['versionId']}"
    assert stats.archived == {"sse-c": 1}
    (said,) = [e for e in logs if e["event"] == "backup.archived"]
    assert said["reason"] == "sse-c" and "customer-provided key" in said["what_to_do"]


def test_another_invalid_request_is_still_a_permanent_failure(versioned, service, stats):
    version = put(versioned, "odd.bin", b"odd")
    inject(versioned.s3, Fault("GetObject", "InvalidRequest", status=400, message="Bad range"))
    with pytest.raises(PermanentError, match="InvalidRequest"):
        service.process(created("odd.bin", b"odd", **version))
    assert stats.archived == {}


def test_an_archived_message_is_deleted_not_retried_and_not_a_failure(versioned, config, volume):
    """Before: ten receives, the dead-letter queue and a 'failed for good' alert."""
    stats = Stats()
    service = make_service(versioned, volume, stats=stats)
    version = put(versioned, "cold/report.pdf", b"%PDF", StorageClass="GLACIER")
    drain(versioned)  # moto's own notification of the put (no versionId, no sequencer)
    versioned.sqs.send_message(
        QueueUrl=QUEUE_URL,
        MessageBody=notification(s3_record("cold/report.pdf", size=4, sequencer="0B", **version)),
    )
    calls = record_calls(versioned.sqs)
    consumer = Consumer(versioned.sqs, service.process, consumer_settings(config), stats=stats)
    consumer.start()
    try:
        wait_until(lambda: calls.deleted_handles(), what="the message deleted")
        wait_until(lambda: queue_counts(versioned.sqs) == (0, 0), what="the queue empty")
    finally:
        consumer.stop(5)
    assert calls.of("ChangeMessageVisibility") == []  # never released for a retry
    assert stats.backups_failed == 0 and stats.failures == {}
    assert stats.archived == {"archived": 1}
    assert stats.backups_succeeded == 0  # nothing was backed up


# -- readable again: ObjectRestore:Completed, or reconcile ---------------------------------


def test_restore_completed_backs_the_version_up_in_the_archived_records_place(
    versioned, service, volume
):
    body = b"ledger 2025\n" * 100
    version = put(versioned, "cold/ledger.csv", body, StorageClass="GLACIER")
    archived = service.process(created("cold/ledger.csv", body, sequencer="0A", **version)).record
    # moto's RestoreObject ignores VersionId and acts on the current version (docs/testing.md):
    # restore this one while it is current, then a newer version arrives first.
    versioned.s3.restore_object(
        Bucket=BUCKET,
        Key="cold/ledger.csv",
        VersionId=version["versionId"],
        RestoreRequest={"Days": 1},
    )
    newer = put(versioned, "cold/ledger.csv", b"ledger 2026")
    newest = service.process(created("cold/ledger.csv", b"ledger 2026", sequencer="0B", **newer))

    result = service.process(restore_completed("cold/ledger.csv", body, version))

    assert result.outcome is Outcome.STORED
    record = result.record
    assert record.version_token == f"v:{version['versionId']}"
    assert record.sha256 and record.unreadable is None
    assert record.event_name == "ObjectRestore:Completed"
    # its place among the key's versions is the put's, not the restore's
    assert (record.order_key, record.event_time) == (archived.order_key, archived.event_time)
    ledger = Ledger(versioned.dynamodb, TABLE)
    assert ledger.latest(BUCKET, "cold/ledger.csv") == newest.record  # the newer one stays
    with volume.open_copy(record.sha256) as reader:
        assert reader.read() == body
    for source in (LedgerSource(ledger), JournalSource(service.journal)):
        chosen = plan(
            source,
            BUCKET,
            RestoreScope(key="cold/ledger.csv"),
            Selector(version=version["versionId"]),
        )
        assert [i.record.sha256 for i in chosen.items] == [record.sha256], source.name


def test_restore_completed_of_the_current_version_takes_over_latest(versioned, service):
    body = b"only version"
    version = put(versioned, "cold/only.txt", body, StorageClass="DEEP_ARCHIVE")
    service.process(created("cold/only.txt", body, **version))
    versioned.s3.restore_object(
        Bucket=BUCKET,
        Key="cold/only.txt",
        VersionId=version["versionId"],
        RestoreRequest={"Days": 1},
    )

    result = service.process(restore_completed("cold/only.txt", body, version))

    latest = Ledger(versioned.dynamodb, TABLE).latest(BUCKET, "cold/only.txt")
    assert result.outcome is Outcome.STORED and latest == result.record
    assert latest.sha256 and not latest.unreadable


def test_restore_completed_of_a_version_never_recorded_takes_its_own_place_not_the_restores(
    versioned, service, volume
):
    """Found by the model test: the version's ObjectCreated event was lost, it was archived,
    a newer version came, and then it was restored. Its place is its LastModified, as
    reconcile would list it, not the restore's time (which would make it current)."""
    body = b"archived before anyone saw it"
    version = put(versioned, "cold/unseen.txt", body, StorageClass="GLACIER")
    put_at = versioned.s3.head_object(
        Bucket=BUCKET, Key="cold/unseen.txt", VersionId=version["versionId"]
    )["LastModified"]
    versioned.s3.restore_object(
        Bucket=BUCKET,
        Key="cold/unseen.txt",
        VersionId=version["versionId"],
        RestoreRequest={"Days": 1},
    )
    newer = put(versioned, "cold/unseen.txt", b"the newer one")
    later = (put_at + timedelta(seconds=1)).isoformat().replace("+00:00", "Z")
    newest = service.process(
        created("cold/unseen.txt", b"the newer one", sequencer="0B", event_time=later, **newer)
    )

    restored = restore_completed("cold/unseen.txt", body, version, at=put_at + timedelta(hours=4))
    result = service.process(restored)

    assert result.outcome is Outcome.STORED
    record = result.record
    assert record.version_token == f"v:{version['versionId']}"
    assert parse_time(record.event_time) == put_at
    assert record.order_key == order.listed_key(put_at, 0)
    ledger = Ledger(versioned.dynamodb, TABLE)
    assert ledger.latest(BUCKET, "cold/unseen.txt") == newest.record  # still the newer one
    for source in (LedgerSource(ledger), JournalSource(service.journal)):
        history = source.history(BUCKET, "cold/unseen.txt")
        assert history_current(history) == newest.record, source.name
        assert history_current(history, parse_time(record.event_time)) == record, source.name


def test_restore_completed_of_a_version_backed_up_before_it_was_archived_is_a_no_op(
    versioned, service
):
    body = b"backed up while it was STANDARD"
    version = put(versioned, "warm.txt", body)
    service.process(created("warm.txt", body, **version))
    calls = record_calls(versioned.s3)

    result = service.process(restore_completed("warm.txt", body, version))

    assert result.outcome is Outcome.ALREADY_DONE
    assert calls.of("GetObject") == []  # the ledger knew it: nothing downloaded again


def test_in_an_unversioned_bucket_the_restored_object_takes_the_archived_ones_token(
    aws, volume, stats
):
    """Without versionIds the put's token is its sequencer; a restore event has none (S3
    sends sequencers for PUTs and DELETEs only) and is matched by its eTag."""
    service = make_service(aws, volume, stats=stats)
    body = b"unversioned and archived"
    etag = aws.s3.put_object(Bucket=BUCKET, Key="flat.txt", Body=body, StorageClass="GLACIER")[
        "ETag"
    ].strip('"')
    archived = service.process(created("flat.txt", body, sequencer="0C", eTag=etag)).record
    assert archived.version_token.startswith("archived:s:0C")
    aws.s3.restore_object(Bucket=BUCKET, Key="flat.txt", RestoreRequest={"Days": 1})
    document = load_event("s3-restore-completed.json")
    document["Records"][0]["s3"]["object"] = {"key": "flat.txt", "size": len(body), "eTag": etag}
    (event,) = parse_message(json.dumps(document)).events

    result = service.process(event)

    assert result.outcome is Outcome.STORED
    assert result.record.version_token == archived.version_token.removeprefix("archived:")
    assert Ledger(aws.dynamodb, TABLE).latest(BUCKET, "flat.txt") == result.record


def test_reconcile_records_an_archived_object_then_backs_it_up_once_readable(
    versioned, config, volume, stats
):
    service = make_service(versioned, volume, stats=stats)
    reconciler = Reconciler(
        s3=versioned.s3,
        ledger=service.ledger,
        service=service,
        volume=volume,
        buckets=[BUCKET],
        settings=ReconcileConfig(),
        limiter=Pacer(1000, sleep=lambda s: None),
    )
    body = b"found by listing"
    version = put(versioned, "cold/listed.txt", body, StorageClass="GLACIER")

    first = reconciler.run_once()

    assert first.failed == 0  # before: a failure every run
    latest = service.ledger.latest(BUCKET, "cold/listed.txt")
    assert (latest.unreadable, latest.storage_class) == ("archived", "GLACIER")
    versioned.s3.restore_object(
        Bucket=BUCKET,
        Key="cold/listed.txt",
        VersionId=version["versionId"],
        RestoreRequest={"Days": 1},
    )

    second = reconciler.run_once()

    assert second.failed == 0 and second.backed_up == 1
    latest = service.ledger.latest(BUCKET, "cold/listed.txt")
    assert latest.sha256 and latest.unreadable is None
    assert latest.version_token == f"v:{version['versionId']}"
    assert stats.archived == {"archived": 1}


# -- what the operator sees: list --json, restore ------------------------------------------


@pytest.fixture
def restore_cli(tmp_path, backup_root):
    shares = {"workers": 2, "staging_bucket": "company-recovery-shares"}
    path = write_config(tmp_path / "config.yaml", backup_root, restore=shares)

    def run(*argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        code = restore_main([argv[0], "--config", str(path), *argv[1:]], out=out, err=err)
        return code, out.getvalue(), err.getvalue()

    return run


def test_list_json_shows_archived_versions_with_their_state(versioned, service, restore_cli):
    cold = put(versioned, "cold/a.bin", b"cold", StorageClass="GLACIER")
    service.process(created("cold/a.bin", b"cold", **cold))
    warm = put(versioned, "warm/b.bin", b"warm")
    service.process(created("warm/b.bin", b"warm", **warm))

    for offline in ([], ["--offline"]):
        code, out, err = restore_cli("list", "--json", "--versions", *offline)
        assert code == 0, err
        rows = {row["key"]: row for row in map(json.loads, out.splitlines())}
        assert (rows["cold/a.bin"]["state"], rows["cold/a.bin"]["storage_class"]) == (
            "archived",
            "GLACIER",
        )
        assert rows["cold/a.bin"]["sha256"] is None
        assert (rows["warm/b.bin"]["state"], rows["warm/b.bin"]["storage_class"]) == (
            "stored",
            None,
        )
    code, out, _ = restore_cli("list")
    assert any(
        line.startswith("cold/a.bin") and "archived GLACIER" in line for line in out.splitlines()
    )


def test_once_backed_up_the_version_lists_as_stored_from_either_source(
    versioned, service, restore_cli
):
    body = b"was cold"
    version = put(versioned, "cold/a.bin", body, StorageClass="GLACIER")
    service.process(created("cold/a.bin", body, **version))
    versioned.s3.restore_object(
        Bucket=BUCKET, Key="cold/a.bin", VersionId=version["versionId"], RestoreRequest={"Days": 1}
    )
    service.process(restore_completed("cold/a.bin", body, version))

    for offline in ([], ["--offline"]):
        code, out, err = restore_cli("list", "--json", *offline)
        assert code == 0, err
        (row,) = map(json.loads, out.splitlines())
        assert (row["state"], row["version_id"]) == ("stored", version["versionId"]), offline
        assert row["sha256"]
        code, out, err = restore_cli("list", "--json", "--versions", *offline)
        states = sorted(json.loads(line)["state"] for line in out.splitlines())
        assert states == ["archived", "stored"]  # the history keeps what happened


def test_a_restore_skips_archived_keys_and_says_why(versioned, service, restore_cli, tmp_path):
    cold = put(versioned, "cold/a.bin", b"cold", StorageClass="GLACIER")
    service.process(created("cold/a.bin", b"cold", **cold))
    warm = put(versioned, "warm/b.bin", b"warm")
    service.process(created("warm/b.bin", b"warm", **warm))
    target = tmp_path / "out"

    code, out, err = restore_cli("restore", "--all", "--to", str(target))

    assert code == 0, err
    assert [p.name for p in target.rglob("*") if p.is_file()] == ["b.bin"]
    assert "cold/a.bin: version" in out and "is archived in S3 (GLACIER)" in out
    assert "skipped 1" in out
    code, _out, err = restore_cli("share", "--key", "cold/a.bin")
    assert code == 1 and "archived in S3" in err


def test_old_records_without_the_new_fields_still_load(versioned, volume):
    """Items written by the previous release have no unreadable / storage_class."""
    old = {
        "bucket": BUCKET,
        "key": "k",
        "version_token": "v:1",
        "order_key": "s1",
        "event_name": "ObjectCreated:Put",
        "event_time": datetime(2026, 1, 1, tzinfo=UTC).isoformat(),
        "backup_time": datetime(2026, 1, 1, tzinfo=UTC).isoformat(),
        "volume_id": "vol-1",
        "sha256": "a" * 64,
        "size": 1,
    }
    record = VersionRecord.from_dict(old)
    assert (record.unreadable, record.storage_class) == (None, None)
    assert "unreadable" not in record.to_dict() and "storage_class" not in record.to_dict()
