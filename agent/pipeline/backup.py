"""Back up one object event: read the exact version, store it durably, record it.

Order of effects, so that a crash at any point loses nothing:
copy durable on the volume → journal line fsynced → DynamoDB record. Only then does the
consumer delete the SQS message. Every step is idempotent, so redelivery is harmless.
"""

from __future__ import annotations

import contextlib
import enum
import threading
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import botocore.exceptions
import structlog

from agent.aws import classify
from agent.errors import ObjectGone, PermanentError
from agent.events import EventKind, ObjectEvent
from agent.pipeline import delivery
from agent.pipeline.recent import RecentVersions
from agent.records import VersionRecord
from agent.storage.barrier import Barrier, NoBarrier
from agent.storage.journal import Journal
from agent.storage.ledger import Ledger
from agent.storage.volume import CompressionSettings, Expectation, StoredCopy, Volume

log = structlog.get_logger("agent.backup")


class Outcome(enum.Enum):
    STORED = "stored"  # new bytes written
    DEDUPLICATED = "deduplicated"  # same content already on the volume; recorded
    ALREADY_DONE = "already_done"  # a duplicate delivery
    TOMBSTONED = "tombstoned"  # a delete recorded
    GONE = "gone"  # deleted or replaced since the event; the newer event covers it


@dataclass(frozen=True, slots=True)
class Result:
    outcome: Outcome
    event: ObjectEvent
    record: VersionRecord | None = None
    copy: StoredCopy | None = None


Processor = Callable[[ObjectEvent], Result]
"""Backs up one event: `BackupService.process`, or a wrapper of it (Monitoring.observe)."""


class BackupService:
    """The per-object write path. Clients, volume, ledger and clock are passed in."""

    def __init__(
        self,
        *,
        s3: Any,
        volume: Volume,
        journal: Journal,
        ledger: Ledger,
        volume_id: str,
        buckets: frozenset[str],
        compression: CompressionSettings,
        expected_bucket_owner: str | None = None,
        clock: Callable[[], datetime] | None = None,
        barrier: Barrier | None = None,
    ) -> None:
        self.s3 = s3
        self.volume = volume
        self.journal = journal
        self.ledger = ledger
        self.volume_id = volume_id
        self.buckets = buckets
        self.compression = compression
        self.expected_bucket_owner = expected_bucket_owner
        self.clock = clock or (lambda: datetime.now(UTC))
        self._locks = KeyedLocks()
        self._recent = RecentVersions()
        # Held shared from the rename to the DynamoDB record (see agent/storage/barrier.py).
        self.barrier: Barrier = barrier or NoBarrier()

    def process(self, event: ObjectEvent, *, order_key: str | None = None) -> Result:
        """Back up one event; `order_key` places a listed version (reconcile)."""
        if event.bucket not in self.buckets:
            raise PermanentError(f"bucket {event.bucket!r} is not in the configured buckets")
        # Two deliveries of one version at once: the second waits, then finds it recorded.
        with self._locks.hold((event.bucket, event.key, event.version_token)):
            if event.kind is EventKind.REMOVED:
                return self._record_delete(event, order_key)
            return self._back_up(event, order_key)

    def _record_delete(self, event: ObjectEvent, order_key: str | None = None) -> Result:
        record = VersionRecord.for_event(
            event, backup_time=self.clock(), volume_id=self.volume_id, order_key=order_key
        )
        if self.ledger.get_version(event.bucket, event.key, record.version_token):
            self.ledger.record(record)  # LATEST may still need advancing after a crash
            return Result(Outcome.ALREADY_DONE, event, record)
        self.volume.ensure_ready()
        with self.barrier.shared():
            self.journal.append(record)
            self.ledger.record(record)
        log.info(
            "backup.tombstoned", bucket=event.bucket, key=event.key, event_name=event.event_name
        )
        return Result(Outcome.TOMBSTONED, event, record)

    def _back_up(self, event: ObjectEvent, order_key: str | None = None) -> Result:
        duplicate = self._duplicate(event)
        if duplicate is not None:
            self._log_duplicate(event)
            return duplicate
        self.volume.ensure_ready()
        if event.size:
            self.volume.ensure_room(event.size)
        with contextlib.ExitStack() as critical:
            try:
                copy = self._download_and_store(
                    event, before_commit=lambda: critical.enter_context(self.barrier.shared())
                )
            except ObjectGone as gone:
                log.warning(
                    "backup.object_gone",
                    bucket=event.bucket,
                    key=event.key,
                    version_id=event.version_id,
                    reason=str(gone),
                )
                return Result(Outcome.GONE, event)
            record = VersionRecord.for_event(
                event,
                backup_time=self.clock(),
                volume_id=self.volume_id,
                order_key=order_key,
                sha256=copy.sha256,
                size=copy.size,
                stored_size=copy.stored_size,
            )
            self.journal.append(record)
            fresh = self.ledger.record(record)
        self._recent.remember(event.bucket, event.key, event.version_token, copy.sha256)
        if not fresh and copy.deduplicated:
            # A first delivery skips the look-up; the conditional write caught the duplicate.
            self._log_duplicate(event)
            return Result(Outcome.ALREADY_DONE, event, record)
        outcome = Outcome.DEDUPLICATED if copy.deduplicated else Outcome.STORED
        log.info(
            "backup.stored",
            bucket=event.bucket,
            key=event.key,
            version_id=event.version_id,
            sha256=copy.sha256,
            bytes=copy.size,
            stored_bytes=copy.stored_size,
            ratio=round(copy.size / copy.stored_size, 2) if copy.stored_size else None,
            deduplicated=copy.deduplicated,
        )
        return Result(outcome, event, record, copy)

    def _duplicate(self, event: ObjectEvent) -> Result | None:
        """ALREADY_DONE if this version is recorded and its copy is on the volume.

        On a message's first receive no earlier attempt can have stored it, so only the
        versions this process recorded lately are consulted (no request): the same event in
        another message. Otherwise (a redelivery, or outside the consumer) the ledger is
        asked. A duplicate missed here is caught by the conditional ledger write.
        """
        if _first_receive(delivery.current()):
            sha256 = self._recent.sha256_of(event.bucket, event.key, event.version_token)
            if sha256 is not None and self.volume.has_copy(sha256):
                return Result(Outcome.ALREADY_DONE, event)
            return None
        known = self.ledger.get_version(event.bucket, event.key, event.version_token)
        if known and known.sha256 and self.volume.has_copy(known.sha256):
            self.ledger.record(known)  # LATEST may still need advancing after a crash
            return Result(Outcome.ALREADY_DONE, event, known)
        return None

    def _log_duplicate(self, event: ObjectEvent) -> None:
        log.info(
            "backup.duplicate",
            bucket=event.bucket,
            key=event.key,
            version_token=event.version_token,
        )

    def _download_and_store(
        self, event: ObjectEvent, before_commit: Callable[[], object] | None = None
    ) -> StoredCopy:
        response = self._get_object(event)
        length = int(response["ContentLength"])
        body = response["Body"]
        if event.size is not None and length != event.size:
            body.close()  # give the connection back to the pool
            raise ObjectGone(f"S3 holds {length} bytes, the event said {event.size}: replaced")
        held_etag = str(response.get("ETag", "")).strip('"')
        if event.etag and held_etag and held_etag != event.etag.strip('"'):
            body.close()
            raise ObjectGone(f"S3 holds eTag {held_etag}, the event said {event.etag}: replaced")
        try:
            return self.volume.write_copy(
                _chunks(body, self.compression.chunk_bytes),
                self.compression,
                Expectation(size=length, md5_hex=_md5_from_etag(response)),
                before_commit=before_commit,
            )
        except (botocore.exceptions.BotoCoreError, ConnectionError, TimeoutError) as exc:
            raise classify(exc, f"S3 read of s3://{event.bucket}/{event.key}") from exc
        finally:
            body.close()

    def _get_object(self, event: ObjectEvent) -> dict[str, Any]:
        request: dict[str, Any] = {"Bucket": event.bucket, "Key": event.key}
        if event.version_id and event.version_id != "null":
            request["VersionId"] = event.version_id
        elif event.etag:
            request["IfMatch"] = f'"{event.etag.strip(chr(34))}"'
        if self.expected_bucket_owner:
            request["ExpectedBucketOwner"] = self.expected_bucket_owner
        try:
            response: dict[str, Any] = self.s3.get_object(**request)
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise classify(exc, f"S3 GetObject s3://{event.bucket}/{event.key}") from exc
        return response


def _first_receive(current: delivery.Delivery | None) -> bool:
    return current is not None and current.first


class KeyedLocks:
    """One lock per key, created on demand and dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[Hashable, tuple[threading.Lock, int]] = {}

    @contextlib.contextmanager
    def hold(self, key: Hashable) -> Iterator[None]:
        with self._guard:
            lock, users = self._locks.get(key, (threading.Lock(), 0))
            self._locks[key] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._guard:
                lock, users = self._locks[key]
                if users == 1:
                    del self._locks[key]
                else:
                    self._locks[key] = (lock, users - 1)


def _chunks(body: Any, size: int) -> Iterator[bytes]:
    while chunk := body.read(size):
        yield chunk


def _md5_from_etag(response: dict[str, Any]) -> str | None:
    """A single-part, SSE-S3 or unencrypted object's eTag is the MD5 of its bytes."""
    etag = str(response.get("ETag", "")).strip('"')
    if not etag or "-" in etag or len(etag) != 32:
        return None
    if response.get("ServerSideEncryption") not in (None, "AES256"):
        return None  # SSE-KMS / SSE-C eTags are not MD5 digests
    if response.get("SSECustomerAlgorithm"):
        return None
    return etag.lower()
