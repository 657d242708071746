"""BackupService against moto S3/DynamoDB: the exact object the event names, or nothing."""

from __future__ import annotations

import hashlib
import json
import threading

import botocore.exceptions
import pytest
from structlog.testing import capture_logs

from agent.errors import (
    DiskFull,
    IntegrityError,
    ObjectGone,
    PermanentError,
    RetryableError,
    VolumeNotReady,
)
from agent.events import ObjectEvent, parse_message
from agent.pipeline.backup import BackupService, Outcome
from agent.storage.ledger import Ledger
from agent.storage.volume import MARKER_NAME
from tests.support.aws import BUCKET, TABLE
from tests.support.aws_hooks import Fault, inject, record_calls
from tests.support.events import notification, s3_record
from tests.support.service import make_service

OWNER = "123456789012"


@pytest.fixture
def service(aws, volume) -> BackupService:
    return make_service(aws, volume)


@pytest.fixture
def versioned(aws):
    aws.s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    return aws


def put(aws, key: str, body: bytes) -> dict:
    response = aws.s3.put_object(Bucket=BUCKET, Key=key, Body=body)
    return {"eTag": response["ETag"].strip('"'), "versionId": response.get("VersionId")}


def created(key: str, body: bytes, sequencer: str = "0055AED6DCD90281E5", **obj) -> ObjectEvent:
    """The event S3 would send for `body` just written under `key` (parsed from its JSON)."""
    fields = {"size": len(body), "sequencer": sequencer, **obj}
    (event,) = parse_message(notification(s3_record(key, **fields))).events
    return event


def removed(key: str, event_name: str = "ObjectRemoved:DeleteMarkerCreated", **obj) -> ObjectEvent:
    (event,) = parse_message(notification(s3_record(key, event_name=event_name, **obj))).events
    return event


def journal_lines(volume) -> list[dict]:
    return [
        json.loads(line)
        for p in sorted(volume.journal_dir.glob("*.jsonl"))
        for line in p.read_text().splitlines()
    ]


# -- the object read is the one the event names ---------------------------------------------


def test_version_id_is_used_when_the_event_has_one(versioned, volume):
    service = make_service(versioned, volume)
    first = put(versioned, "doc.txt", b"version one")
    put(versioned, "doc.txt", b"version two, newer")
    calls = record_calls(versioned.s3)

    result = service.process(created("doc.txt", b"version one", **first))

    assert result.outcome is Outcome.STORED
    assert result.copy.sha256 == hashlib.sha256(b"version one").hexdigest()
    (params,) = calls.of("GetObject")
    assert params["VersionId"] == first["versionId"]
    assert "IfMatch" not in params


def test_if_match_on_the_etag_is_used_without_a_version(aws, service):
    etag = put(aws, "doc.txt", b"unversioned")["eTag"]
    calls = record_calls(aws.s3)
    assert service.process(created("doc.txt", b"unversioned", eTag=etag)).outcome is Outcome.STORED
    (params,) = calls.of("GetObject")
    assert params["IfMatch"] == f'"{etag}"'
    assert "VersionId" not in params


def test_a_null_version_id_is_read_with_if_match(aws, service):
    etag = put(aws, "doc.txt", b"suspended versioning")["eTag"]
    calls = record_calls(aws.s3)
    service.process(created("doc.txt", b"suspended versioning", eTag=etag, versionId="null"))
    (params,) = calls.of("GetObject")
    assert "VersionId" not in params and params["IfMatch"] == f'"{etag}"'


def test_expected_bucket_owner_is_sent_when_configured(aws, volume):
    etag = put(aws, "doc.txt", b"owned")["eTag"]
    calls = record_calls(aws.s3)
    make_service(aws, volume, expected_bucket_owner=OWNER).process(
        created("doc.txt", b"owned", eTag=etag)
    )
    make_service(aws, volume).process(created("doc.txt", b"owned", eTag=etag, sequencer="FF"))
    with_owner, without = calls.of("GetObject")
    assert with_owner["ExpectedBucketOwner"] == OWNER
    assert "ExpectedBucketOwner" not in without


def test_a_multipart_object_is_stored_without_an_md5_check(aws, service):
    parts = [b"a" * (5 << 20), b"tail"]
    upload = aws.s3.create_multipart_upload(Bucket=BUCKET, Key="big.bin")
    etags = [
        aws.s3.upload_part(
            Bucket=BUCKET, Key="big.bin", UploadId=upload["UploadId"], PartNumber=n, Body=body
        )["ETag"]
        for n, body in enumerate(parts, start=1)
    ]
    done = aws.s3.complete_multipart_upload(
        Bucket=BUCKET,
        Key="big.bin",
        UploadId=upload["UploadId"],
        MultipartUpload={"Parts": [{"ETag": e, "PartNumber": n} for n, e in enumerate(etags, 1)]},
    )
    body = b"".join(parts)
    event = created(
        "big.bin",
        body,
        eTag=done["ETag"].strip('"'),
        event_name="ObjectCreated:CompleteMultipartUpload",
    )
    result = service.process(event)
    assert result.outcome is Outcome.STORED
    assert result.record.etag.endswith("-2")
    assert result.copy.sha256 == hashlib.sha256(body).hexdigest()


# -- deleted or replaced since the event: reported, the record finished ---------------------


def test_an_object_replaced_since_the_event_is_gone(aws, service, volume):
    old = put(aws, "doc.txt", b"old content")
    put(aws, "doc.txt", b"replaced content")
    with capture_logs() as logs:
        result = service.process(created("doc.txt", b"old content", eTag=old["eTag"]))
    assert result.outcome is Outcome.GONE
    assert result.record is None and result.copy is None
    assert list(volume.objects_dir.rglob("*.zst")) == []
    assert Ledger(aws.dynamodb, TABLE).latest(BUCKET, "doc.txt") is None
    gone = [entry for entry in logs if entry["event"] == "backup.object_gone"]
    assert gone and "PreconditionFailed" in gone[0]["reason"]


def test_a_version_deleted_since_the_event_is_gone(versioned, volume):
    service = make_service(versioned, volume)
    version = put(versioned, "doc.txt", b"short-lived")
    versioned.s3.delete_object(Bucket=BUCKET, Key="doc.txt", VersionId=version["versionId"])
    result = service.process(created("doc.txt", b"short-lived", **version))
    assert result.outcome is Outcome.GONE


def test_a_key_deleted_since_the_event_is_gone(aws, service):
    put(aws, "doc.txt", b"short-lived")
    aws.s3.delete_object(Bucket=BUCKET, Key="doc.txt")
    assert service.process(created("doc.txt", b"short-lived")).outcome is Outcome.GONE


def test_a_size_that_differs_from_the_event_is_reported_not_stored(aws, service, volume):
    etag = put(aws, "doc.txt", b"twelve bytes")["eTag"]
    with capture_logs() as logs:
        result = service.process(created("doc.txt", b"eleven byte", eTag=etag))
    assert result.outcome is Outcome.GONE
    assert list(volume.objects_dir.rglob("*.zst")) == []
    (gone,) = [entry for entry in logs if entry["event"] == "backup.object_gone"]
    assert "S3 holds 12 bytes, the event said 11" in gone["reason"]


# -- what is stored and recorded ------------------------------------------------------------


def test_a_stored_version_is_journalled_then_recorded(versioned, volume):
    service = make_service(versioned, volume)
    body = b"quarterly numbers\n" * 500
    version = put(versioned, "reports/q1 summary.txt", body)
    result = service.process(created("reports/q1 summary.txt", body, **version))
    record = Ledger(versioned.dynamodb, TABLE).latest(BUCKET, "reports/q1 summary.txt")
    assert record == result.record
    assert record.sha256 == hashlib.sha256(body).hexdigest()
    assert (record.size, record.version_id, record.etag) == (
        len(body),
        version["versionId"],
        version["eTag"],
    )
    assert record.sequencer == "0055AED6DCD90281E5"
    assert record.volume_id == "vol-test"
    assert 0 < record.stored_size < record.size
    assert journal_lines(volume) == [record.to_dict()]
    volume.verify_copy(record.sha256, len(body))


def test_a_duplicate_delivery_is_a_no_op(aws, service, volume):
    etag = put(aws, "doc.txt", b"once")["eTag"]
    event = created("doc.txt", b"once", eTag=etag)
    first = service.process(event)
    calls = record_calls(aws.s3)
    again = service.process(event)
    assert again.outcome is Outcome.ALREADY_DONE
    assert again.record == first.record
    assert calls.of("GetObject") == []
    assert len(journal_lines(volume)) == 1


def test_identical_content_under_two_keys_is_stored_once(aws, service, volume):
    one = put(aws, "a.txt", b"same bytes")
    two = put(aws, "b.txt", b"same bytes")
    assert service.process(created("a.txt", b"same bytes", **one)).outcome is Outcome.STORED
    result = service.process(created("b.txt", b"same bytes", sequencer="FF", **two))
    assert result.outcome is Outcome.DEDUPLICATED
    assert len(list(volume.objects_dir.rglob("*.zst"))) == 1
    assert len(journal_lines(volume)) == 2


def test_hostile_keys_are_just_data(aws, service, volume, tmp_path):
    before = {p for p in tmp_path.rglob("*")}
    keys = ["../../etc/passwd", "/absolute/path.txt", "a//b", "..", "~root/.ssh/id_rsa"]
    for n, key in enumerate(keys):
        etag = put(aws, key, f"payload {n}".encode())["eTag"]
        assert service.process(created(key, f"payload {n}".encode(), eTag=etag)).outcome in (
            Outcome.STORED,
            Outcome.DEDUPLICATED,
        )
    new_files = {p for p in tmp_path.rglob("*") if p.is_file()} - before
    for path in new_files:
        relative = path.relative_to(volume.root)
        assert relative.parts[0] in ("objects", "journal"), relative
        assert relative.parts[0] == "journal" or len(relative.stem) == 64


# -- deletes are tombstones -----------------------------------------------------------------


def test_a_delete_marker_is_a_tombstone_and_becomes_latest(aws, service, volume):
    etag = put(aws, "doc.txt", b"soon deleted")["eTag"]
    service.process(created("doc.txt", b"soon deleted", eTag=etag, sequencer="10"))
    calls = record_calls(aws.s3)
    delete = removed("doc.txt", versionId="marker-1", sequencer="20")

    result = service.process(delete)

    assert result.outcome is Outcome.TOMBSTONED
    assert calls.operations() == []  # nothing to read for a delete
    latest = Ledger(aws.dynamodb, TABLE).latest(BUCKET, "doc.txt")
    assert latest.deleted is True and latest.sha256 is None
    assert latest.version_token == "del:v:marker-1"
    assert journal_lines(volume)[-1] == latest.to_dict()
    assert service.process(delete).outcome is Outcome.ALREADY_DONE
    assert len(journal_lines(volume)) == 2


def test_a_permanent_delete_of_a_version_is_a_tombstone_too(aws, service):
    result = service.process(removed("doc.txt", "ObjectRemoved:Delete", versionId="v1"))
    assert result.outcome is Outcome.TOMBSTONED
    assert result.record.event_name == "ObjectRemoved:Delete"


@pytest.mark.parametrize(
    ("event_name", "marker", "version"),
    [
        ("LifecycleExpiration:Delete", False, None),  # an unversioned bucket's object
        ("LifecycleExpiration:DeleteMarkerCreated", True, "marker-1"),  # versioned: a marker
    ],
)
def test_a_lifecycle_expiration_is_recorded_as_a_delete_under_its_own_name(
    aws, service, volume, event_name, marker, version
):
    """S3 Lifecycle's deletions (lifecycle-configure-notification.html) tombstone the key like
    a user's delete; the record says it was the lifecycle rule."""
    etag = put(aws, "logs/old.txt", b"expiring")["eTag"]
    service.process(created("logs/old.txt", b"expiring", eTag=etag, sequencer="10"))

    result = service.process(removed("logs/old.txt", event_name, versionId=version, sequencer="20"))

    assert result.outcome is Outcome.TOMBSTONED
    latest = Ledger(aws.dynamodb, TABLE).latest(BUCKET, "logs/old.txt")
    assert (latest.deleted, latest.delete_marker, latest.event_name) == (True, marker, event_name)
    assert journal_lines(volume)[-1]["event_name"] == event_name


# -- refusals and failures ------------------------------------------------------------------


def test_events_for_a_foreign_bucket_are_rejected_without_reading(aws, service, volume):
    calls = record_calls(aws.s3)
    (event,) = parse_message(notification(s3_record("x.txt", bucket="someone-else", size=1))).events
    with pytest.raises(PermanentError, match="'someone-else' is not in the configured buckets"):
        service.process(event)
    assert calls.operations() == []
    assert journal_lines(volume) == []


def test_a_volume_without_its_marker_is_not_written(aws, service, volume):
    etag = put(aws, "doc.txt", b"data")["eTag"]
    (volume.root / MARKER_NAME).unlink()
    with pytest.raises(VolumeNotReady):
        service.process(created("doc.txt", b"data", eTag=etag))
    assert list(volume.objects_dir.rglob("*.zst")) == []


def test_an_object_larger_than_the_free_space_is_refused_before_reading(aws, volume):
    volume.min_free_bytes = 1 << 60
    service = make_service(aws, volume)
    etag = put(aws, "doc.txt", b"data")["eTag"]
    calls = record_calls(aws.s3)
    with pytest.raises(DiskFull):
        service.process(created("doc.txt", b"data", eTag=etag))
    assert calls.of("GetObject") == []


@pytest.mark.parametrize(
    ("code", "status", "error"),
    [
        ("SlowDown", 503, RetryableError),
        ("InternalError", 500, RetryableError),
        ("AccessDenied", 403, PermanentError),
        ("NoSuchKey", 404, ObjectGone),
    ],
)
def test_s3_errors_are_classified(aws, service, code, status, error):
    etag = put(aws, "doc.txt", b"data")["eTag"]
    inject(aws.s3, Fault("GetObject", code, status=status))
    event = created("doc.txt", b"data", eTag=etag)
    if error is ObjectGone:
        assert service.process(event).outcome is Outcome.GONE
        return
    with pytest.raises(error, match=code):
        service.process(event)


class WatchedBody:
    """Wraps a GetObject StreamingBody to see whether the backup closes it."""

    def __init__(self, body) -> None:
        self._body = body
        self.closed = False

    def read(self, *args):
        return self._body.read(*args)

    def close(self) -> None:
        self.closed = True
        self._body.close()


def watch_bodies(s3) -> list[WatchedBody]:
    bodies: list[WatchedBody] = []

    def wrap(parsed, **_):
        if "Body" in parsed:
            parsed["Body"] = WatchedBody(parsed["Body"])
            bodies.append(parsed["Body"])

    s3.meta.events.register("after-call.s3.GetObject", wrap)
    return bodies


def test_the_response_body_is_closed_when_the_size_does_not_match(aws, service):
    """An unclosed body keeps its HTTP connection out of the pool."""
    etag = put(aws, "doc.txt", b"twelve bytes")["eTag"]
    bodies = watch_bodies(aws.s3)
    assert service.process(created("doc.txt", b"eleven byte", eTag=etag)).outcome is Outcome.GONE
    assert [b.closed for b in bodies] == [True]


def test_the_response_body_is_closed_after_a_copy(aws, service):
    etag = put(aws, "doc.txt", b"some bytes")["eTag"]
    bodies = watch_bodies(aws.s3)
    service.process(created("doc.txt", b"some bytes", eTag=etag))
    assert [b.closed for b in bodies] == [True]


def test_two_deliveries_of_one_version_at_once_read_it_once(aws, service):
    """The second waits for the first, then finds the version recorded."""
    etag = put(aws, "doc.txt", b"delivered twice")["eTag"]
    event = created("doc.txt", b"delivered twice", eTag=etag)
    reads = record_calls(aws.s3)
    second_read = threading.Event()
    reads.on_call = lambda call: (
        call.operation == "GetObject" and len(reads.of("GetObject")) == 2 and second_read.set()
    )

    def slow_first_read(params, **_):
        if len(reads.of("GetObject")) == 1:
            second_read.wait(0.5)  # a second read would happen now if nothing held it back

    aws.s3.meta.events.register("provide-client-params.s3.GetObject", slow_first_read)
    outcomes: list[Outcome] = []
    threads = [
        threading.Thread(target=lambda: outcomes.append(service.process(event).outcome))
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert sorted(o.value for o in outcomes) == ["already_done", "stored"]
    assert len(reads.of("GetObject")) == 1
    assert service._locks._locks == {}  # the per-version lock is dropped afterwards


def test_an_etag_that_differs_from_the_event_is_reported_not_stored(versioned, volume):
    """With a VersionId S3 does not compare eTags (IfMatch is not sent): the agent does."""
    service = make_service(versioned, volume)
    version = put(versioned, "doc.txt", b"the real bytes")
    bodies = watch_bodies(versioned.s3)
    with capture_logs() as logs:
        result = service.process(
            created("doc.txt", b"the real bytes", versionId=version["versionId"], eTag="0" * 32)
        )
    assert result.outcome is Outcome.GONE
    assert [b.closed for b in bodies] == [True]
    (gone,) = [entry for entry in logs if entry["event"] == "backup.object_gone"]
    assert f"S3 holds eTag {version['eTag']}, the event said {'0' * 32}" in gone["reason"]
    assert list(volume.objects_dir.rglob("*.zst")) == []


def test_a_quoted_etag_in_the_event_matches(versioned, volume):
    version = put(versioned, "doc.txt", b"quoted")
    event = created(
        "doc.txt", b"quoted", versionId=version["versionId"], eTag=f'"{version["eTag"]}"'
    )
    assert make_service(versioned, volume).process(event).outcome is Outcome.STORED


def test_deleting_an_old_version_does_not_mark_the_key_deleted(versioned, volume):
    """ObjectRemoved:Delete with a VersionId removes that version only; S3 still serves v2."""
    service = make_service(versioned, volume)
    v1 = put(versioned, "doc.txt", b"first")
    v2 = put(versioned, "doc.txt", b"second")
    service.process(created("doc.txt", b"first", sequencer="10", **v1))
    service.process(created("doc.txt", b"second", sequencer="20", **v2))
    versioned.s3.delete_object(Bucket=BUCKET, Key="doc.txt", VersionId=v1["versionId"])
    delete = removed("doc.txt", "ObjectRemoved:Delete", versionId=v1["versionId"], sequencer="30")

    assert service.process(delete).outcome is Outcome.TOMBSTONED
    assert service.process(delete).outcome is Outcome.ALREADY_DONE

    latest = Ledger(versioned.dynamodb, TABLE).latest(BUCKET, "doc.txt")
    assert latest.version_id == v2["versionId"] and latest.deleted is False


def test_a_delete_marker_marks_the_key_deleted_whatever_its_version_id(versioned, volume):
    service = make_service(versioned, volume)
    v1 = put(versioned, "doc.txt", b"first")
    service.process(created("doc.txt", b"first", sequencer="10", **v1))
    service.process(removed("doc.txt", versionId="marker-id", sequencer="20"))
    assert Ledger(versioned.dynamodb, TABLE).latest(BUCKET, "doc.txt").deleted is True


# -- a large download is read in a thread of its own (issue 19): the same checks apply -------

LARGE = hashlib.sha256(b"seed").digest() * (200 << 10)  # 6.25 MiB: read ahead in a thread


class InterferedBody(WatchedBody):
    """A GetObject body whose `at`-th read is changed by `interfere`; notes each reader."""

    def __init__(self, body, at: int, interfere) -> None:
        super().__init__(body)
        self.at = at
        self.interfere = interfere
        self.readers: list[int] = []
        self.reads_after_close = 0

    def read(self, *args):
        self.readers.append(threading.get_ident())
        if self.closed:
            self.reads_after_close += 1
        data = self._body.read(*args)
        if len(self.readers) == self.at:
            return self.interfere(data)
        return data


def interfere_with_reads(s3, at: int, interfere) -> list[InterferedBody]:
    bodies: list[InterferedBody] = []

    def wrap(parsed, **_):
        if "Body" in parsed and not bodies:  # the first GetObject only
            parsed["Body"] = InterferedBody(parsed["Body"], at, interfere)
            bodies.append(parsed["Body"])

    s3.meta.events.register("after-call.s3.GetObject", wrap)
    return bodies


def flip_a_byte(data: bytes) -> bytes:
    return data[:100] + bytes([data[100] ^ 1]) + data[101:]


def test_a_large_download_tampered_on_the_way_is_refused_and_nothing_recorded(aws, service, volume):
    etag = put(aws, "big.bin", LARGE)["eTag"]  # single part: the eTag is the MD5
    bodies = interfere_with_reads(aws.s3, 30, flip_a_byte)

    with pytest.raises(IntegrityError, match="does not match eTag"):
        service.process(created("big.bin", LARGE, eTag=etag))

    (body,) = bodies
    assert threading.get_ident() not in body.readers  # read in the reader thread
    assert body.closed and body.reads_after_close == 0
    assert not volume.has_copy(hashlib.sha256(LARGE).hexdigest())
    assert list(volume.objects_dir.rglob("*.zst")) == [] and list(volume.tmp_dir.iterdir()) == []
    assert Ledger(aws.dynamodb, TABLE).versions(BUCKET, "big.bin") == []
    assert journal_lines(volume) == []


def test_a_large_download_that_times_out_midway_is_retryable(aws, service, volume):
    etag = put(aws, "big.bin", LARGE)["eTag"]

    def time_out(data: bytes) -> bytes:
        raise botocore.exceptions.ReadTimeoutError(endpoint_url="http://s3")

    bodies = interfere_with_reads(aws.s3, 30, time_out)
    with pytest.raises(RetryableError, match="S3 read of s3://"):
        service.process(created("big.bin", LARGE, eTag=etag))
    assert bodies[0].closed and bodies[0].reads_after_close == 0
    assert list(volume.tmp_dir.iterdir()) == []

    copy = service.process(created("big.bin", LARGE, eTag=etag, sequencer="FF"))  # redelivered
    assert copy.outcome is Outcome.STORED
    volume.verify_copy(hashlib.sha256(LARGE).hexdigest(), len(LARGE))
