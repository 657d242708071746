"""Races between S3 and the agent: the object changes after its event was sent, or many
keys receive the same bytes at once.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor

from structlog.testing import capture_logs

from tests.reliability.pipeline import assert_backed_up_once, notification, s3_record
from tests.support.aws import BUCKET


def test_an_object_deleted_before_its_download_is_finished_not_retried(pipeline):
    pipeline.clients.s3.put_object(Bucket=BUCKET, Key="race/deleted.txt", Body=b"brief")
    pipeline.clients.s3.delete_object(Bucket=BUCKET, Key="race/deleted.txt")

    with capture_logs() as logs:
        pipeline.run_until(pipeline.drained)

    names = [e["event"] for e in logs]
    assert names.count("backup.object_gone") == 1
    assert "backup.failed" not in names
    assert pipeline.consumer.stats.outcomes["gone"] == 1
    created = [v for v in pipeline.ledger.versions(BUCKET, "race/deleted.txt") if not v.deleted]
    assert created == []  # nothing stored for bytes the agent never saw
    assert not any(pipeline.volume.objects_dir.rglob("*.zst"))


def test_an_object_overwritten_before_its_download_keeps_only_what_was_read(pipeline):
    old, new = b"first draft\n" * 100, b"final text, longer than the draft\n" * 100
    pipeline.clients.s3.put_object(Bucket=BUCKET, Key="race/overwritten.txt", Body=old)
    pipeline.clients.s3.put_object(Bucket=BUCKET, Key="race/overwritten.txt", Body=new)

    with capture_logs() as logs:
        pipeline.run_until(pipeline.drained)

    names = [e["event"] for e in logs]
    assert names.count("backup.object_gone") == 1  # the first event: its bytes are gone
    assert names.count("backup.stored") == 1
    assert "backup.failed" not in names
    assert_backed_up_once(pipeline.ledger, pipeline.volume, BUCKET, {"race/overwritten.txt": new})


def test_an_overwrite_with_the_same_size_is_caught_by_the_etag(pipeline):
    old, new = b"A" * 5000, b"B" * 5000
    put = pipeline.clients.s3.put_object(Bucket=BUCKET, Key="race/same-size.bin", Body=old)
    pipeline.clients.s3.put_object(Bucket=BUCKET, Key="race/same-size.bin", Body=new)
    # A hand-made event for the old bytes (same size as the new ones): only the eTag differs.
    pipeline.send(
        notification(
            s3_record(BUCKET, "race/same-size.bin", size=5000, etag=put["ETag"].strip('"'))
        )
    )

    with capture_logs() as logs:
        pipeline.run_until(pipeline.drained)

    assert [e["event"] for e in logs].count("backup.object_gone") >= 2
    latest = pipeline.ledger.latest(BUCKET, "race/same-size.bin")
    assert latest is not None and latest.sha256 == hashlib.sha256(new).hexdigest()
    stored = {p.name for p in pipeline.volume.objects_dir.rglob("*.zst")}
    assert stored == {hashlib.sha256(new).hexdigest() + ".zst"}


def test_a_version_deleted_for_good_before_its_download_is_finished(pipeline):
    s3 = pipeline.clients.s3
    s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    put = s3.put_object(Bucket=BUCKET, Key="race/purged.txt", Body=b"secret")
    s3.delete_object(Bucket=BUCKET, Key="race/purged.txt", VersionId=put["VersionId"])
    pipeline.send(
        notification(
            s3_record(
                BUCKET,
                "race/purged.txt",
                size=6,
                version_id=put["VersionId"],
                sequencer="00F1",
            )
        )
    )

    with capture_logs() as logs:
        pipeline.run_until(pipeline.drained)

    assert "backup.failed" not in [e["event"] for e in logs]
    assert [e["event"] for e in logs].count("backup.object_gone") >= 1
    assert not any(pipeline.volume.objects_dir.rglob("*.zst"))


def test_the_same_bytes_under_many_keys_at_once_are_stored_once(make_pipeline):
    pipeline = make_pipeline(consumer={"workers": 8})
    body = os.urandom(400_000)
    keys = [f"copies/{i:02d}/same.bin" for i in range(24)]
    pipeline.start()
    with ThreadPoolExecutor(8) as pool:
        list(
            pool.map(
                lambda k: pipeline.clients.s3.put_object(Bucket=BUCKET, Key=k, Body=body), keys
            )
        )

    pipeline.run_until(
        lambda: pipeline.drained() and all(pipeline.ledger.latest(BUCKET, k) for k in keys)
    )

    assert_backed_up_once(pipeline.ledger, pipeline.volume, BUCKET, dict.fromkeys(keys, body))
    listed = [r.key for r in pipeline.ledger.keys(BUCKET, "copies/")]
    assert listed == sorted(keys)
