"""What S3 holds besides the bytes, recorded per version (issue 15, item 5).

The content headers and user metadata come from the GetObject the backup makes anyway
(https://docs.aws.amazon.com/AmazonS3/latest/API/API_GetObject.html: Content-Type,
Content-Encoding, Content-Language, Content-Disposition, Cache-Control, Expires, x-amz-meta-*);
the tags from one GetObjectTagging, with the VersionId when there is one
(https://docs.aws.amazon.com/AmazonS3/latest/API/API_GetObjectTagging.html). Bounded by S3's
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

from agent.records import VersionRecord
from agent.storage.journal import Journal
from agent.storage.ledger import Ledger
from tests.support.aws import BUCKET, TABLE

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


def attributes(record: VersionRecord) -> dict:
    return {name: getattr(record, name) for name in (*RECORDED, "tags")}


# -- journal and ledger carry them; old lines and items still load --------------------------


def full_record() -> VersionRecord:
    return VersionRecord(
        bucket=BUCKET,
        key="site/index.html",
        version_token="v:1",
        order_key="s0055",
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
    ("expires", "not a date"),
    ("metadata", ["owner", "ann"]),
    ("metadata", {"owner": 7}),
    ("metadata", {"bad key": "v"}),  # not a header name
    ("metadata", {"k": "v" * 3000}),  # over S3's 2 KB
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
