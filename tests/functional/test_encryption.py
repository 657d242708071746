"""SSE-KMS objects are backed up; the backup volume's own encryption is checked at start."""

from __future__ import annotations

import dataclasses
import hashlib
from datetime import UTC, datetime
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from agent.events import EventKind, ObjectEvent
from agent.pipeline.backup import BackupService, Outcome, _md5_from_etag
from agent.runtime.daemon import Daemon
from agent.runtime.wiring import compression_settings
from agent.storage.encryption import check_at_startup, discover_volume_id
from tests.support.aws import BUCKET, make_config
from tests.support.service import make_service

KMS_ETAG = "8d3f0c1a2b4e5f60718293a4b5c6d7e8"  # real S3: not the MD5 of the bytes under SSE-KMS


def _event(key: str, size: int, etag: str) -> ObjectEvent:
    return ObjectEvent(
        kind=EventKind.CREATED,
        event_name="ObjectCreated:Put",
        bucket=BUCKET,
        key=key,
        size=size,
        etag=etag,
        version_id=None,
        sequencer=None,
        event_time=datetime.now(UTC),
    )


def _service(aws, volume, config) -> BackupService:
    return make_service(aws, volume, compression=compression_settings(config))


def test_sse_kms_object_is_backed_up_although_its_etag_is_not_an_md5(aws, volume, config):
    kms = aws.client("kms")
    key_arn = kms.create_key(Description="bucket key")["KeyMetadata"]["Arn"]
    aws.s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    body = b"confidential " * 4096
    put = aws.s3.put_object(
        Bucket=BUCKET,
        Key="secret.txt",
        Body=body,
        ServerSideEncryption="aws:kms",
        SSEKMSKeyId=key_arn,
    )
    assert put["ServerSideEncryption"] == "aws:kms"

    def real_s3_etag(parsed, **_kwargs):  # moto returns the MD5; real S3 does not for SSE-KMS
        if parsed.get("ServerSideEncryption") == "aws:kms":
            parsed["ETag"] = f'"{KMS_ETAG}"'

    aws.s3.meta.events.register("after-call.s3.GetObject", real_s3_etag)
    # Real S3's event carries the same non-MD5 eTag; VersionId reads send no If-Match.
    event = dataclasses.replace(
        _event("secret.txt", len(body), KMS_ETAG), version_id=put["VersionId"]
    )
    result = _service(aws, volume, config).process(event)

    assert result.outcome is Outcome.STORED
    assert result.record.sha256 == hashlib.sha256(body).hexdigest()
    volume.verify_copy(result.record.sha256, len(body))


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ({"ETag": f'"{KMS_ETAG}"', "ServerSideEncryption": "aws:kms"}, None),
        ({"ETag": f'"{KMS_ETAG}"', "ServerSideEncryption": "aws:kms:dsse"}, None),
        ({"ETag": f'"{KMS_ETAG}"', "SSECustomerAlgorithm": "AES256"}, None),
        ({"ETag": f'"{KMS_ETAG}-3"'}, None),
        ({"ETag": f'"{KMS_ETAG.upper()}"', "ServerSideEncryption": "AES256"}, KMS_ETAG),
        ({"ETag": f'"{KMS_ETAG}"'}, KMS_ETAG),
    ],
)
def test_md5_is_only_taken_from_etags_that_are_md5s(response, expected):
    assert _md5_from_etag(response) == expected


def _volume(ec2, encrypted: bool) -> str:
    return ec2.create_volume(AvailabilityZone="us-east-1a", Size=10, Encrypted=encrypted)[
        "VolumeId"
    ]


def test_unencrypted_volume_is_warned_about_and_alerted(aws, backup_root):
    ec2 = aws.ec2()
    volume_id = _volume(ec2, encrypted=False)
    alerts: list[tuple[str, str]] = []

    with capture_logs() as logs:
        result = check_at_startup(
            lambda: ec2, volume_id, backup_root, lambda s, d: alerts.append((s, d))
        )

    assert result is not None and result.encrypted is False
    assert [e["event"] for e in logs] == ["volume.unencrypted"]
    assert logs[0]["log_level"] == "warning"
    assert alerts and volume_id in alerts[0][1]


def test_encrypted_volume_is_logged_and_not_alerted(aws, backup_root):
    ec2 = aws.ec2()
    volume_id = _volume(ec2, encrypted=True)
    alerts: list[tuple[str, str]] = []

    with capture_logs() as logs:
        check_at_startup(lambda: ec2, volume_id, backup_root, lambda s, d: alerts.append((s, d)))

    assert [e["event"] for e in logs] == ["volume.encrypted"]
    assert alerts == []


def test_unknown_volume_is_reported_not_fatal(aws, backup_root):
    with capture_logs() as logs:
        result = check_at_startup(aws.ec2, "vol-0123456789abcdef0", backup_root)
    assert result is not None and result.encrypted is None
    assert [e["event"] for e in logs] == ["volume.encryption_unknown"]


def test_daemon_checks_the_configured_volume(aws, backup_root, volume):
    volume_id = _volume(aws.ec2(), encrypted=False)
    config = make_config(
        backup_root,
        storage={"root": str(backup_root), "min_free_bytes": 0, "volume_id": volume_id},
    )
    alerts: list[tuple[str, str]] = []
    daemon = Daemon(config, aws, alert=lambda s, d: alerts.append((s, d)))

    daemon.check_volume_encryption()

    assert [subject for subject, _ in alerts] == ["backup volume is not encrypted"]


def test_volume_id_is_discovered_from_the_nvme_serial_of_the_mount(tmp_path):
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        "22 1 259:1 / / rw,relatime shared:1 - xfs /dev/nvme0n1p1 rw\n"
        "97 22 259:3 / /mnt/backups rw,relatime shared:40 - xfs /dev/nvme1n1 rw\n"
    )
    serial = tmp_path / "block" / "nvme1n1" / "device" / "serial"
    serial.parent.mkdir(parents=True)
    serial.write_text("vol0abc123def4567890  \n")

    found = discover_volume_id(
        Path("/mnt/backups/objects"),
        mountinfo=mountinfo,
        sys_block=tmp_path / "block",
    )
    root_found = discover_volume_id(
        Path("/var/lib"), mountinfo=mountinfo, sys_block=tmp_path / "block"
    )

    assert found == "vol-0abc123def4567890"
    assert root_found is None  # nvme0n1 has no serial file here
