"""Hand a recovered file to someone without AWS access: stage it, presign a GET URL.

The staged copy goes under ``restore.staging_prefix`` in ``restore.staging_bucket``,
encrypted at rest (SSE-S3), and the bucket's lifecycle rule (created by bootstrap)
deletes it after ``restore.share_expiry``. The URL is signed with SigV4 and lives
``--expires`` (at most the share expiry, at most 7 days), but never longer than the
credentials that sign it: instance-role, SSO and assumed-role credentials expire in hours,
and a URL dies with them. A URL cut short says so (`Shared.cut_short`); credentials about
to expire are refused before anything is staged.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import botocore.exceptions

from agent.aws import error_code
from agent.config import RestoreConfig
from agent.errors import BackupAgentError, ConfigError
from agent.records import VersionRecord
from agent.restore.targets import upload_verified
from agent.schedule import format_duration
from agent.storage.volume import Volume

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import LifecycleRuleTypeDef

LIFECYCLE_RULE_ID = "backup-agent-share-expiry"
SIGV4_MAX_SECONDS = 7 * 86400  # the longest X-Amz-Expires S3 accepts
MIN_URL_SECONDS = 60  # shorter than this, a link is dead before it is read


def staging_bucket(settings: RestoreConfig, backed_up: list[str]) -> str:
    """The configured staging bucket; ConfigError when share is not set up safely."""
    bucket = settings.staging_bucket
    if not bucket:
        raise ConfigError(["restore.staging_bucket: required for share (not configured)"])
    if bucket in backed_up:
        raise ConfigError(
            [f"restore.staging_bucket: {bucket} is a backed-up bucket; use a separate bucket"]
        )
    return bucket


def lifecycle_days(settings: RestoreConfig) -> int:
    """Lifecycle expiry counts whole days (S3 rounds to the next midnight UTC)."""
    return max(1, math.ceil(settings.share_expiry_seconds / 86400))


def ensure_staging(s3: S3Client, settings: RestoreConfig, bucket: str) -> list[tuple[str, bool]]:
    """Default encryption, public access blocked and the expiry rule; (what, changed) pairs."""
    done: list[tuple[str, bool]] = []
    s3.put_bucket_encryption(
        Bucket=bucket,
        ServerSideEncryptionConfiguration={
            "Rules": [
                {
                    "ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"},
                    "BucketKeyEnabled": True,
                }
            ]
        },
    )
    done.append((f"encryption on {bucket}", True))
    s3.put_public_access_block(
        Bucket=bucket,
        PublicAccessBlockConfiguration={
            "BlockPublicAcls": True,
            "IgnorePublicAcls": True,
            "BlockPublicPolicy": True,
            "RestrictPublicBuckets": True,
        },
    )
    done.append((f"public access block on {bucket}", True))
    done.append(_ensure_lifecycle(s3, settings, bucket))
    return done


def _ensure_lifecycle(s3: S3Client, settings: RestoreConfig, bucket: str) -> tuple[str, bool]:
    what = f"lifecycle rule {LIFECYCLE_RULE_ID} on s3://{bucket}/{settings.staging_prefix}"
    wanted: LifecycleRuleTypeDef = {
        "ID": LIFECYCLE_RULE_ID,
        "Filter": {"Prefix": settings.staging_prefix},
        "Status": "Enabled",
        "Expiration": {"Days": lifecycle_days(settings)},
        "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1},
    }
    try:
        rules = s3.get_bucket_lifecycle_configuration(Bucket=bucket).get("Rules", [])
    except botocore.exceptions.ClientError as exc:
        if error_code(exc) != "NoSuchLifecycleConfiguration":
            raise
        rules = []
    current = [r for r in rules if r.get("ID") == LIFECYCLE_RULE_ID]
    if current and _same_rule(current[0], wanted):
        return what, False
    others = [r for r in rules if r.get("ID") != LIFECYCLE_RULE_ID]
    s3.put_bucket_lifecycle_configuration(
        Bucket=bucket, LifecycleConfiguration={"Rules": [*others, wanted]}
    )
    return what, True


def _same_rule(current: Mapping[str, Any], wanted: Mapping[str, Any]) -> bool:
    return all(current.get(name) == value for name, value in wanted.items())


def staged_headers(record: VersionRecord, name: str) -> dict[str, str]:
    """The recorded Content-Type and Content-Encoding (so the file opens as what it is, a
    gzip'd asset decoded), and a download: the recorded Content-Disposition when it is an
    attachment, else one named after the key. Never inline: the staging bucket serves no
    page of the backed-up bucket's."""
    headers = {"ContentDisposition": f"attachment; filename*=UTF-8''{quote(name, safe='')}"}
    disposition = record.content_disposition or ""
    if disposition.split(";", 1)[0].strip().lower() == "attachment":
        headers["ContentDisposition"] = disposition
    if record.content_type:
        headers["ContentType"] = record.content_type
    if record.content_encoding:
        headers["ContentEncoding"] = record.content_encoding
    return headers


@dataclass(frozen=True, slots=True)
class Shared:
    record: VersionRecord
    bucket: str
    key: str
    url: str
    expires_at: datetime
    asked_seconds: int = 0
    cut_short: str | None = None  # why the URL lives less than asked (the warning)

    def to_dict(self) -> dict[str, Any]:
        found = {
            "type": "share",
            "bucket": self.record.bucket,
            "key": self.record.key,
            "version_id": self.record.version_id,
            "version_token": self.record.version_token,
            "sha256": self.record.sha256,
            "size": self.record.size,
            "staged": f"s3://{self.bucket}/{self.key}",
            "url": self.url,
            "expires_at": self.expires_at.isoformat(),
        }
        if self.cut_short:
            found["warning"] = self.cut_short
        return found


class Sharer:
    """`presigner` signs with SigV4 (`Clients.s3_presigner`); `credentials_expiry` says when
    its credentials stop working (`Clients.credentials_expiry`; None: long-term keys)."""

    def __init__(
        self,
        s3: S3Client,
        volume: Volume,
        settings: RestoreConfig,
        bucket: str,
        *,
        presigner: S3Client,
        credentials_expiry: Callable[[], datetime | None] = lambda: None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.s3 = s3
        self.volume = volume
        self.settings = settings
        self.bucket = bucket
        self.presigner = presigner
        self.credentials_expiry = credentials_expiry
        self.clock = clock or (lambda: datetime.now(UTC))

    def share(self, record: VersionRecord, expires_seconds: int | None = None) -> Shared:
        """Stage the verified bytes of `record` and presign a GET URL for them."""
        limit = self.settings.share_expiry_seconds
        asked = expires_seconds or limit
        if asked > limit:
            expiry = format_duration(self.settings.share_expiry)
            raise ConfigError([f"--expires: longer than restore.share_expiry ({expiry})"])
        self._lifetime(asked)  # refuse credentials about to expire before staging anything
        name = record.key.rstrip("/").rsplit("/", 1)[-1] or "file"
        key = f"{self.settings.staging_prefix}{uuid.uuid4().hex}/{name}"
        upload_verified(
            self.s3,
            self.volume,
            record,
            self.bucket,
            key,
            extra={"ServerSideEncryption": "AES256", **staged_headers(record, name)},
        )
        seconds, cut_short = self._lifetime(asked)  # again: the upload took time
        url = self.presigner.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=seconds
        )
        expires_at = self.clock() + timedelta(seconds=seconds)
        return Shared(record, self.bucket, key, url, expires_at, asked, cut_short)

    def _lifetime(self, asked: int) -> tuple[int, str | None]:
        """The seconds the URL can really live, and why that is less than `asked`."""
        seconds, why = min(asked, SIGV4_MAX_SECONDS), None
        if seconds < asked:
            why = "SigV4 URLs live at most 7 days"
        expiry = self.credentials_expiry()
        if expiry is not None:
            remaining = math.floor((expiry - self.clock()).total_seconds())
            if remaining < MIN_URL_SECONDS:
                raise BackupAgentError(
                    f"the AWS credentials that would sign the URL expire at"
                    f" {expiry.isoformat(timespec='seconds')} (in {max(0, remaining)} s):"
                    " refresh them (a new session) and share again"
                )
            if remaining < seconds:
                seconds = remaining
                why = (
                    f"the AWS credentials that sign it expire at"
                    f" {expiry.isoformat(timespec='seconds')}"
                )
        if why is None:
            return seconds, None
        return seconds, (
            f"the URL lives {format_duration(timedelta(seconds=seconds))}, shorter than the"
            f" {format_duration(timedelta(seconds=asked))} asked: {why}"
        )
