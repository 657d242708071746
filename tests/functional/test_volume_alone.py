"""When DynamoDB is gone, the volume alone (journal + copies) rebuilds the same ledger."""

from __future__ import annotations

from agent.events import parse_message
from agent.storage.journal import Journal
from agent.storage.ledger import Ledger, table_definition
from agent.storage.volume import CompressionSettings
from tests.support.aws import BUCKET, TABLE
from tests.support.events import notification, s3_record
from tests.support.service import make_service


def test_replaying_the_journal_rebuilds_the_ledger(aws, volume):
    aws.s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    ledger = Ledger(aws.dynamodb, TABLE)
    service = make_service(aws, volume, ledger=ledger, compression=CompressionSettings(threads=1))
    uploads = [("a.txt", b"one"), ("a.txt", b"two"), ("dir/b.txt", b"three")]
    versions = []
    for sequencer, (key, body) in enumerate(uploads, start=1):
        response = aws.s3.put_object(Bucket=BUCKET, Key=key, Body=body)
        versions.append(response["VersionId"])
        fields = {"size": len(body), "eTag": response["ETag"].strip('"')}
        fields |= {"versionId": response["VersionId"], "sequencer": f"{sequencer:02X}"}
        (event,) = parse_message(notification(s3_record(key, **fields))).events
        service.process(event)
    deletes = [
        # the first version of a.txt removed for good: a.txt itself is still there
        s3_record(
            "a.txt", event_name="ObjectRemoved:Delete", versionId=versions[0], sequencer="08"
        ),
        s3_record(
            "dir/b.txt",
            event_name="ObjectRemoved:DeleteMarkerCreated",
            versionId="m",
            sequencer="09",
        ),
    ]
    for delete in deletes:
        service.process(parse_message(notification(delete)).events[0])

    aws.dynamodb.create_table(**table_definition("rebuilt"))
    rebuilt = Ledger(aws.dynamodb, "rebuilt")
    for record in Journal(volume.journal_dir).read_all():
        rebuilt.record(record)

    for key in ("a.txt", "dir/b.txt"):
        assert rebuilt.versions(BUCKET, key) == ledger.versions(BUCKET, key)
        assert rebuilt.latest(BUCKET, key) == ledger.latest(BUCKET, key)
    assert [r.key for r in rebuilt.keys(BUCKET)] == ["a.txt", "dir/b.txt"]
    assert rebuilt.latest(BUCKET, "dir/b.txt").deleted is True
    assert rebuilt.latest(BUCKET, "a.txt").version_id == versions[1]
    for version in rebuilt.versions(BUCKET, "a.txt"):
        if not version.deleted:
            volume.verify_copy(version.sha256, version.size)
