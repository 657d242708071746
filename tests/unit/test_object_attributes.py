"""What S3 holds besides the bytes, recorded per version (issue 15, item 5).

The content headers and user metadata come from the GetObject the backup makes anyway
(https://docs.aws.amazon.com/AmazonS3/latest/API/API_GetObject.html: Content-Type,
Content-Encoding, Content-Language, Content-Disposition, Cache-Control, Expires, x-amz-meta-*);
the tags from one GetObjectTagging, with the VersionId when there is one
(https://docs.aws.amazon.com/AmazonS3/latest/API/API_GetObjectTagging.html), made only when
GetObject's `x-amz-tagging-count` says the version has tags, once reading tags has been seen
to be allowed (issue 19: the header is sent "when you have the relevant permission to read
object tags"). moto sends the header for a tagged version, as S3 does, but checks no
permission, so the "absent for want of permission" case is made by removing it. Bounded by S3's
own limits: user metadata 2 KB (https://docs.aws.amazon.com/AmazonS3/latest/userguide/UsingMetadata.html),
10 tags (https://docs.aws.amazon.com/AmazonS3/latest/userguide/object-tagging.html).
Records read back from the volume or DynamoDB are untrusted: a wrong value is dropped with a
warning, never a crash.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from boto3.dynamodb.types import TypeSerializer
from structlog.testing import capture_logs

from agent.errors import RetryableError
from agent.events import ObjectEvent, parse_message
from agent.order import event_key
from agent.pipeline import backup
from agent.pipeline.backup import Outcome
from agent.records import VersionRecord
from agent.stats import Stats
from agent.storage.journal import Journal
from agent.storage.ledger import Ledger
from tests.support.aws import BUCKET, TABLE
from tests.support.aws_hooks import Fault, inject, record_calls
from tests.support.events import notification, s3_record
from tests.support.service import make_service

WEBSITE = {
    "ContentType": "text/html; charset=utf-8",
    "ContentEncoding": "gzip",
    "ContentLanguage": "fr-CA",
    "ContentDisposition": 'inline; filename="index.html"',
    "CacheControl": "public, max-age=300",
    "Expires": datetime(2031, 1, 2, 3, 4, 5, tzinfo=UTC),
    "Metadata": {"owner": "web team", "build": "1234"},
}
RECORDED = {
    "content_type": "text/html; charset=utf-8",
    "content_encoding": "gzip",
    "content_language": "fr-CA",
    "content_disposition": 'inline; filename="index.html"',
    "cache_control": "public, max-age=300",
    "expires": "Thu, 02 Jan 2031 03:04:05 GMT",
    "metadata": {"owner": "web team", "build": "1234"},
}


def created(key: str, body: bytes, put: dict) -> ObjectEvent:
    etag = put["ETag"].strip('"')
    fields = {"size": len(body), "sequencer": "0055AED6DCD90281E5", "eTag": etag}
    if put.get("VersionId"):
        fields["versionId"] = put["VersionId"]
    (event,) = parse_message(notification(s3_record(key, **fields))).events
    return event


@pytest.fixture
def versioned(aws):
    aws.s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    return aws


def attributes(record: VersionRecord) -> dict:
    return {name: getattr(record, name) for name in (*RECORDED, "tags")}


# -- the backup records them --------------------------------------------------------------


def test_headers_metadata_and_tags_of_the_exact_version_are_recorded(versioned, volume):
    body = b"<html>compressed</html>"
    first = versioned.s3.put_object(
        Bucket=BUCKET, Key="site/index.html", Body=body, Tagging="team=web&tier=gold", **WEBSITE
    )
    versioned.s3.put_object(Bucket=BUCKET, Key="site/index.html", Body=b"newer", Tagging="x=y")
    calls = record_calls(versioned.s3)
    stats = Stats()
    service = make_service(versioned, volume, stats=stats)

    result = service.process(created("site/index.html", body, first))

    assert result.outcome is Outcome.STORED
    assert attributes(result.record) == {**RECORDED, "tags": {"team": "web", "tier": "gold"}}
    assert calls.operations() == ["GetObject", "GetObjectTagging"]  # one request added
    (tagging,) = calls.of("GetObjectTagging")
    assert tagging["VersionId"] == first["VersionId"]  # the version's tags, not the newest's
    assert stats.tag_requests == {"read": 1}
    ledger = Ledger(versioned.dynamodb, TABLE)
    assert ledger.latest(BUCKET, "site/index.html") == result.record
    assert list(Journal(volume.journal_dir).read_all()) == [result.record]


def test_an_object_without_any_is_recorded_as_having_none(aws, volume):
    put = aws.s3.put_object(Bucket=BUCKET, Key="plain.bin", Body=b"bytes")
    service = make_service(aws, volume)

    record = service.process(created("plain.bin", b"bytes", put)).record

    assert record.content_type == "binary/octet-stream"  # what S3 answers for no type
    assert record.metadata == {} and record.tags == {}  # recorded, none (not "unknown")
    assert record.content_encoding is None and record.expires is None


def test_an_untagged_version_costs_no_tag_request_once_reading_tags_is_seen_allowed(
    versioned, volume
):
    """The first untagged version still asks (S3 leaves TagCount out when the role may not
    read tags, too); a success proves the permission, and the next ones skip the request."""
    bodies = {k: k.encode() for k in ("a", "b", "c")}
    puts = {k: versioned.s3.put_object(Bucket=BUCKET, Key=k, Body=b) for k, b in bodies.items()}
    calls = record_calls(versioned.s3)
    stats = Stats()
    service = make_service(versioned, volume, stats=stats)

    records = [service.process(created(k, bodies[k], p)).record for k, p in puts.items()]

    assert [r.tags for r in records] == [{}, {}, {}]  # "none", as when asked
    assert calls.operations() == ["GetObject", "GetObjectTagging", "GetObject", "GetObject"]
    assert stats.tag_requests == {"read": 1}


def test_a_tagged_version_is_asked_for_its_tags_after_the_permission_is_proven(versioned, volume):
    """moto answers TagCount for the exact version asked for, as S3 documents it."""
    plain = versioned.s3.put_object(Bucket=BUCKET, Key="plain", Body=b"p")
    tagged = versioned.s3.put_object(Bucket=BUCKET, Key="doc", Body=b"d", Tagging="team=web")
    versioned.s3.put_object(Bucket=BUCKET, Key="doc", Body=b"newer")  # no tags
    assert versioned.s3.get_object(Bucket=BUCKET, Key="doc", VersionId=tagged["VersionId"])[
        "TagCount"
    ] == 1 and "TagCount" not in versioned.s3.get_object(Bucket=BUCKET, Key="doc")
    service = make_service(versioned, volume)
    service.process(created("plain", b"p", plain))  # proves the permission
    calls = record_calls(versioned.s3)

    record = service.process(created("doc", b"d", tagged)).record

    assert record.tags == {"team": "web"}
    assert calls.operations() == ["GetObject", "GetObjectTagging"]


def test_without_tag_count_the_tags_are_still_asked_until_a_request_succeeds(aws, volume):
    """A role that may not read tags gets no TagCount even for a tagged object: before any
    GetObjectTagging has succeeded, its absence proves nothing."""
    put = aws.s3.put_object(Bucket=BUCKET, Key="k", Body=b"b", Tagging="a=1")
    aws.s3.meta.events.register(
        "after-call.s3.GetObject", lambda parsed, **_: parsed.pop("TagCount", None)
    )
    calls = record_calls(aws.s3)

    record = make_service(aws, volume).process(created("k", b"b", put)).record

    assert record.tags == {"a": "1"}
    assert calls.operations() == ["GetObject", "GetObjectTagging"]


def test_the_permission_is_proven_again_after_tag_proof_skips(aws, volume, monkeypatch):
    """A permission withdrawn after the proof is seen within TAG_PROOF_SKIPS versions."""
    monkeypatch.setattr(backup, "TAG_PROOF_SKIPS", 2)
    puts = {k: aws.s3.put_object(Bucket=BUCKET, Key=k, Body=b"x") for k in "abcde"}
    calls = record_calls(aws.s3)
    service = make_service(aws, volume)

    for key, put in puts.items():
        service.process(created(key, b"x", put))

    assert [p["Key"] for p in calls.of("GetObjectTagging")] == ["a", "d"]


def test_record_tags_off_makes_no_tagging_request(aws, volume):
    put = aws.s3.put_object(Bucket=BUCKET, Key="k", Body=b"b", Tagging="a=1", ContentType="a/b")
    calls = record_calls(aws.s3)
    service = make_service(aws, volume, record_tags=False)

    record = service.process(created("k", b"b", put)).record

    assert calls.operations() == ["GetObject"]
    assert record.tags is None and record.content_type == "a/b"  # headers cost nothing extra


def test_tags_refused_are_said_once_and_the_backup_goes_on(aws, volume):
    stats = Stats()
    service = make_service(aws, volume, stats=stats)
    inject(aws.s3, Fault("GetObjectTagging", "AccessDenied", status=403, times=2))
    puts = {k: aws.s3.put_object(Bucket=BUCKET, Key=k, Body=k.encode()) for k in ("a", "b")}

    with capture_logs() as logs:
        records = [service.process(created(k, k.encode(), p)).record for k, p in puts.items()]

    assert [r.tags for r in records] == [None, None]  # unknown, not "none"
    assert all(r.sha256 for r in records)
    assert [e["event"] for e in logs if e["event"] == "backup.tags_denied"] == [
        "backup.tags_denied"
    ]
    assert stats.tag_requests == {"denied": 2}


def test_a_throttled_tag_request_is_retried_before_anything_is_written(aws, volume):
    put = aws.s3.put_object(Bucket=BUCKET, Key="k", Body=b"body")
    service = make_service(aws, volume)
    inject(aws.s3, Fault("GetObjectTagging", "SlowDown", status=503, times=1))

    with pytest.raises(RetryableError):
        service.process(created("k", b"body", put))
    assert not list(volume.journal_dir.glob("*.jsonl"))
    assert service.process(created("k", b"body", put)).record.tags == {}


def test_metadata_beyond_s3s_2kb_limit_is_not_recorded(aws, volume):
    """S3 itself refuses more than 2 KB of user metadata; what exceeds it here is dropped
    whole (a partial set would be restored as if it were the object's)."""
    big = {"a": "x" * 2000, "b": "y" * 100}
    put = aws.s3.put_object(Bucket=BUCKET, Key="k", Body=b"b", Metadata=big)  # moto allows it
    with capture_logs() as logs:
        record = make_service(aws, volume).process(created("k", b"b", put)).record
    assert record.metadata is None and record.sha256
    assert any(e["event"] == "record.attribute_dropped" for e in logs)


# -- journal and ledger carry them; old lines and items still load --------------------------


def full_record() -> VersionRecord:
    return VersionRecord(
        bucket=BUCKET,
        key="site/index.html",
        version_token="v:1",
        order_key=event_key(datetime(2026, 11, 23, 10, tzinfo=UTC), None),  # today's form
        event_name="ObjectCreated:Put",
        event_time="2026-11-23T10:00:00+00:00",
        backup_time="2026-11-23T10:00:01+00:00",
        volume_id="vol-test",
        version_id="1",
        sha256="a" * 64,
        size=10,
        stored_size=7,
        **RECORDED,
        tags={"team": "web", "tier": "gold"},
    )


def test_journal_and_ledger_round_trip_them(tmp_path, aws):
    record = full_record()
    journal = Journal(tmp_path)
    journal.append(record)
    line = json.loads(next(tmp_path.glob("*.jsonl")).read_text())
    assert line["metadata"] == RECORDED["metadata"] and line["tags"]["team"] == "web"
    assert list(journal.read_all()) == [record]
    ledger = Ledger(aws.dynamodb, TABLE)
    ledger.record(record)
    assert ledger.latest(BUCKET, record.key) == record
    assert ledger.get_version(BUCKET, record.key, "v:1") == record


def test_lines_and_items_written_before_them_still_load(tmp_path, aws):
    old = {k: v for k, v in full_record().to_dict().items() if k not in (*RECORDED, "tags")}
    (tmp_path / "2026-11-23.jsonl").write_text(json.dumps(old) + "\n")
    (loaded,) = Journal(tmp_path).read_all()
    assert loaded.sha256 == "a" * 64 and loaded.metadata is None and loaded.tags is None
    item = {k: TypeSerializer().serialize(v) for k, v in old.items()}
    item |= {"pk": {"S": f"{BUCKET}/{old['key']}"}, "sk": {"S": "V#v:1"}}
    aws.dynamodb.put_item(TableName=TABLE, Item=item)
    found = Ledger(aws.dynamodb, TABLE).get_version(BUCKET, old["key"], "v:1")
    assert found is not None and found.content_type is None and found.tags is None


HOSTILE = [
    ("content_type", 42),
    ("content_type", "text/html\r\nx-amz-acl: public-read"),  # a header injected
    ("cache_control", "x" * 5000),
    ("content_disposition", "attachment; filename=\u2603.txt"),  # no HTTP header can carry it
    ("expires", "not a date"),
    ("metadata", ["owner", "ann"]),
    ("metadata", {"owner": 7}),
    ("metadata", {"bad key": "v"}),  # not a header name
    ("metadata", {"k": "v" * 3000}),  # over S3's 2 KB
    ("metadata", {"k": "caf\u00e9"}),  # S3 answers with =?UTF-8?B?…?=; boto3 refuses it
    ("tags", "team=web"),
    ("tags", {f"k{i}": "v" for i in range(11)}),  # S3 allows 10
    ("tags", {"k": "v" * 257}),
    ("tags", {"": "v"}),
]


@pytest.mark.parametrize(
    ("name", "value"), HOSTILE, ids=[f"{n}-{i}" for i, (n, _) in enumerate(HOSTILE)]
)
def test_a_wrong_value_read_back_is_dropped_with_a_warning(tmp_path, aws, name, value):
    line = {**full_record().to_dict(), name: value}
    (tmp_path / "2026-11-23.jsonl").write_text(json.dumps(line) + "\n")
    with capture_logs() as logs:
        (loaded,) = Journal(tmp_path).read_all()
    assert getattr(loaded, name) is None
    assert loaded.sha256 == "a" * 64 and loaded.content_encoding == "gzip"  # the rest stays
    (warning,) = [e for e in logs if e["event"] == "record.attribute_dropped"]
    assert warning["field"] == name and warning["key"] == "site/index.html"

    if value == {"": "v"}:
        return  # moto's DynamoDB cannot hold an empty map key; the journal case shows the rule
    item = {k: TypeSerializer().serialize(v) for k, v in line.items()}
    item |= {"pk": {"S": f"{BUCKET}/site/index.html"}, "sk": {"S": "V#v:1"}}
    aws.dynamodb.put_item(TableName=TABLE, Item=item)
    found = Ledger(aws.dynamodb, TABLE).get_version(BUCKET, "site/index.html", "v:1")
    assert found is not None and getattr(found, name) is None


def test_a_record_with_them_is_still_hashable():
    assert hash(full_record()) == hash(full_record())
