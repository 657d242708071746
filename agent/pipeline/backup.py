"""Back up one object event: read the exact version, store it durably, record it.

Order of effects, so that a crash at any point loses nothing:
copy durable on the volume → journal line fsynced → DynamoDB record. Only then does the
consumer delete the SQS message. Every step is idempotent, so redelivery is harmless.

With a `Committer` (the daemon's), a copy made for the consumer (inside a delivery) ends
the worker's part once it is durable: the journal line and the ledger record are written
by the commit stage (agent/pipeline/commit.py) together with the other copies finished
meanwhile, and `process` returns a `Result` whose outcome is COMMITTING and whose
`pending` resolves to the final Result once recorded. Deletes, unreadable versions,
duplicates, a restored version that replaces its archived record, and every call outside
the consumer (reconcile, scrub) keep the synchronous path.

A version S3 holds but will not serve (GetObject answers InvalidObjectState for GLACIER,
DEEP_ARCHIVE and the Intelligent-Tiering archive tiers; 400 InvalidRequest for SSE-C) is a
state, not an error: it is recorded as unreadable (`Outcome.ARCHIVED`, no copy) and the
message is finished. Once the object is restored in S3, `ObjectRestore:Completed` (or a
reconcile run) backs the version up, and its record takes the archived record's place.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import threading
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast

import botocore.exceptions
import structlog

from agent import order
from agent.aws import classify, error_code
from agent.categories import Categories
from agent.errors import ObjectGone, ObjectUnreadable, PermanentError, RetryableError
from agent.events import EventKind, ObjectEvent
from agent.pipeline import delivery
from agent.pipeline.commit import Committer, Pending, journal_again_if_expired
from agent.pipeline.recent import DEFAULT_CAPACITY, RecentVersions
from agent.records import VersionRecord, attributes_of, tags_of
from agent.stats import Stats
from agent.storage.barrier import Barrier, NoBarrier
from agent.storage.journal import Journal
from agent.storage.ledger import Ledger, Written
from agent.storage.volume import CompressionSettings, Expectation, StoredCopy, Volume

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = structlog.get_logger("agent.backup")


class Outcome(enum.Enum):
    STORED = "stored"  # new bytes written
    DEDUPLICATED = "deduplicated"  # same content already on the volume; recorded
    ALREADY_DONE = "already_done"  # a duplicate delivery
    TOMBSTONED = "tombstoned"  # a delete recorded
    GONE = "gone"  # deleted or replaced since the event; the newer event covers it
    ARCHIVED = "archived"  # S3 will not serve the bytes (archived, SSE-C): recorded as such
    COMMITTING = "committing"  # copy durable; journal line and record with the committer


TAG_PROOF_SKIPS = 1000  # GetObjectTagging skipped this often between two that succeed
ARCHIVED = "archived"  # VersionRecord.unreadable: InvalidObjectState
SSE_C = "sse-c"  # VersionRecord.unreadable: encrypted with a customer-provided key
WHAT_TO_DO = {
    ARCHIVED: (
        "restore it in S3 first (RestoreObject, or 'Initiate restore' in the console); the agent"
        " backs it up when ObjectRestore:Completed arrives or a reconcile run finds it readable"
    ),
    SSE_C: (
        "the agent holds no customer-provided key: copy the object to one encrypted with SSE-S3"
        " or SSE-KMS (the copy is backed up), or keep it backed up by other means"
    ),
}


@dataclass(frozen=True, slots=True)
class Result:
    outcome: Outcome
    event: ObjectEvent
    record: VersionRecord | None = None
    copy: StoredCopy | None = None
    pending: Pending[Result] | None = None  # COMMITTING: resolves to the final Result


Processor = Callable[[ObjectEvent], Result]
"""Backs up one event: `BackupService.process`, or a wrapper of it (Monitoring.observe)."""


class BackupService:
    """The per-object write path. Clients, volume, ledger and clock are passed in."""

    def __init__(
        self,
        *,
        s3: S3Client,
        volume: Volume,
        journal: Journal,
        ledger: Ledger,
        volume_id: str,
        buckets: frozenset[str],
        compression: CompressionSettings,
        expected_bucket_owner: str | None = None,
        clock: Callable[[], datetime] | None = None,
        barrier: Barrier | None = None,
        stats: Stats | None = None,
        record_tags: bool = True,
        categories: Categories | None = None,
        committer: Committer | None = None,
        recent_versions: int = DEFAULT_CAPACITY,
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
        self.categories = categories or Categories()
        self._locks = KeyedLocks()
        self._recent = RecentVersions(capacity=recent_versions)
        # Held shared from the rename to the DynamoDB record (see agent/storage/barrier.py).
        self.barrier: Barrier = barrier or NoBarrier()
        self.stats = stats or Stats()  # counts versions newly found unreadable, tag requests
        self.record_tags = record_tags  # storage.record_tags: one GetObjectTagging per version
        self._tags_denied: set[str] = set()  # buckets whose tags we were refused (said once)
        # (bucket, with a VersionId): GetObject answers that may skip GetObjectTagging until
        # the proof that we may read tags there is asked again (see `_tags`)
        self._tags_readable: dict[tuple[str, bool], int] = {}
        self._tags_guard = threading.Lock()
        # The commit stage of the consumer's copies (None: every record written in `process`).
        self.committer = committer

    def process(self, event: ObjectEvent, *, order_key: str | None = None) -> Result:
        """Back up one event; `order_key` places a listed version (reconcile)."""
        if event.bucket not in self.buckets:
            raise PermanentError(f"bucket {event.bucket!r} is not in the configured buckets")
        # Two deliveries of one version at once: the second waits, then finds it recorded
        # (with the commit stage the lock is released once the record is written).
        with contextlib.ExitStack() as held:
            held.enter_context(self._locks.hold((event.bucket, event.key, event.version_token)))
            if event.kind is EventKind.REMOVED:
                return self._record_delete(event, order_key)
            return self._back_up(event, order_key, held)

    def _record_delete(self, event: ObjectEvent, order_key: str | None = None) -> Result:
        record = VersionRecord.for_event(
            event, backup_time=self.clock(), volume_id=self.volume_id, order_key=order_key
        )
        known = self.ledger.get_version(event.bucket, event.key, record.version_token)
        if known is not None:
            if self.ledger.group is not None and known.holder_in(self.ledger.group) is None:
                self.ledger.record(record)  # this replica group's hold, and LATEST
            else:
                self.ledger.advance(known)  # LATEST may still need advancing after a crash
            return Result(Outcome.ALREADY_DONE, event, record)
        self.volume.ensure_ready()
        with self.barrier.shared():
            self._journal_and_record(record)
        log.info(
            "backup.tombstoned", bucket=event.bucket, key=event.key, event_name=event.event_name
        )
        return Result(Outcome.TOMBSTONED, event, record)

    def _back_up(
        self, event: ObjectEvent, order_key: str | None, held: contextlib.ExitStack
    ) -> Result:
        duplicate = self._duplicate(event)
        if duplicate is not None:
            self._log_duplicate(event)
            return duplicate
        self.volume.ensure_ready()
        if event.size:
            self.volume.ensure_room(event.size)
        replaces = self._unreadable_record_of(event)
        # the committer records it: the rename's directory fsync is left to its next batch
        committing = bool(
            self.committer is not None
            and self.committer.directories is not None
            and replaces is None
            and delivery.current()
        )
        with contextlib.ExitStack() as critical:
            try:
                copy, attributes, last_modified = self._download_and_store(
                    event,
                    before_commit=lambda: critical.enter_context(self.barrier.shared()),
                    sync_directory=not committing,
                )
            except ObjectUnreadable as unreadable:
                return self._record_unreadable(event, unreadable)
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
                **attributes,
            )
            if replaces is not None:
                record = _in_place_of(replaces, record)
            elif event.restored and order_key is None and last_modified is not None:
                record = _at_its_own_time(record, last_modified)
            if self.committer is not None and replaces is None and delivery.current():
                # (`committing` or a committer that syncs no directories: every copy's
                # directory was fsynced at its rename)
                # The copy is durable: the rest is the committer's. It releases the barrier
                # (taken before the rename), then the version's lock, once recorded.
                passed = contextlib.ExitStack()
                passed.push(held.pop_all())
                passed.push(critical.pop_all())
                pending: Pending[Result] = Pending(
                    record, lambda fresh: self._recorded(event, record, copy, fresh), passed
                )
                try:
                    self.committer.submit(pending)
                except BaseException:
                    passed.close()
                    raise
                return Result(Outcome.COMMITTING, event, record, copy, pending)
            # a dedup onto a copy another worker renamed for the committer: its directory
            # entry durable before this journal line names it (docs/reliability.md)
            self.volume.sync_directories()
            fresh = self._journal_and_record(record)
            if replaces is not None:  # the same position in the key's order: LATEST, if it was
                self.ledger.settle(record.bucket, record.key)
        return self._recorded(event, record, copy, fresh)

    def _journal_and_record(self, record: VersionRecord) -> bool:
        """The journal line, then the ledger record (fresh: the conditional write was this
        one's), as the committer writes a batch; journalled again if retention expired the
        version in between (`journal_again_if_expired`), whatever the write answered (its
        answer lost, the retry says "already recorded" or fails)."""
        end = self.journal.append(record)
        try:
            written = self.ledger.write(record)
        except Exception as exc:
            try:
                journal_again_if_expired(self.journal, self.ledger, end, [(record, exc)])
            except Exception as again:  # noqa: BLE001 - the write's own failure is the one raised
                log.warning("backup.journal_again_failed", key=record.key, error=str(again))
            raise
        journal_again_if_expired(self.journal, self.ledger, end, [(record, written)])
        return written is Written.FRESH

    def _recorded(
        self, event: ObjectEvent, record: VersionRecord, copy: StoredCopy, fresh: bool
    ) -> Result:
        """The Result of a copy whose journal line and ledger record are written (`fresh`:
        the ledger's conditional write was this one's)."""
        self._recent.remember(event.bucket, event.key, event.version_token, copy.sha256)
        if not fresh:
            elsewhere = self._held_elsewhere(event)
            if elsewhere is not None:
                known, holder = elsewhere
                # Another member's conditional write won: the ledger names its volume. The
                # copy here stays (journalled, content-addressed: restorable from this
                # volume too), counted; docs/design.md "A fleet on one queue".
                self.stats.count("fleet_duplicates")
                log.info(
                    "backup.fleet_duplicate",
                    bucket=event.bucket,
                    key=event.key,
                    version_token=event.version_token,
                    holder=holder,
                )
                return Result(Outcome.ALREADY_DONE, event, known)
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

    def _record_unreadable(self, event: ObjectEvent, unreadable: ObjectUnreadable) -> Result:
        """Record a version S3 holds but will not serve: a state, so the message is finished
        (no retries, no dead-letter queue), said once, counted, listed by `backup-restore list`."""
        record = dataclasses.replace(
            VersionRecord.for_event(
                event,
                backup_time=self.clock(),
                volume_id=self.volume_id,
                unreadable=unreadable.reason,
                storage_class=unreadable.storage_class,
            ),
            version_token=f"{unreadable.reason}:{event.version_token}",
        )
        known = self.ledger.get_version(event.bucket, event.key, record.version_token)
        if known is not None:
            self.ledger.advance(known)  # LATEST may still need advancing after a crash
            log.debug(
                "backup.still_archived",
                bucket=event.bucket,
                key=event.key,
                version_id=event.version_id,
                reason=unreadable.reason,
            )
            return Result(Outcome.ARCHIVED, event, known)
        self.volume.ensure_ready()
        with self.barrier.shared():
            fresh = self._journal_and_record(record)
        if fresh:
            self.stats.record_archived(unreadable.reason)
            log.warning(
                "backup.archived",
                bucket=event.bucket,
                key=event.key,
                version_id=event.version_id,
                reason=unreadable.reason,
                storage_class=unreadable.storage_class,
                error=str(unreadable),
                what_to_do=WHAT_TO_DO[unreadable.reason],
            )
        return Result(Outcome.ARCHIVED, event, record)

    def _unreadable_record_of(self, event: ObjectEvent) -> VersionRecord | None:
        """The record of this version as archived, when it may have become readable: on
        `ObjectRestore:Completed`, and for calls outside the consumer (reconcile, scrub).
        One GetItem; live events of new versions are not asked about (no request added)."""
        if not event.restored and delivery.current() is not None:
            return None
        if event.version_id and event.version_id != "null":
            token = f"{ARCHIVED}:{event.version_token}"
            return self.ledger.get_version(event.bucket, event.key, token)
        latest = self.ledger.latest(event.bucket, event.key)  # unversioned: one object a key
        if latest is not None and latest.unreadable == ARCHIVED and _same_version(latest, event):
            return latest
        return None

    def _duplicate(self, event: ObjectEvent) -> Result | None:
        """ALREADY_DONE if this version is recorded and its copy is on the volume.

        On a message's first receive no earlier attempt can have stored it, so only the
        versions this process recorded lately are consulted (no request): the same event in
        another message. Otherwise (a redelivery, or outside the consumer) the ledger is
        asked. A duplicate missed here is caught by the conditional ledger write.
        """
        if _first_receive(delivery.current()) and not event.restored:
            sha256 = self._recent.sha256_of(event.bucket, event.key, event.version_token)
            if sha256 is not None and self.volume.has_copy(sha256):
                return Result(Outcome.ALREADY_DONE, event)
            return None
        known = self.ledger.get_version(event.bucket, event.key, event.version_token)
        if not (known and known.sha256):
            return None
        # The volume that holds the copy for this agent's replica group (without replicas:
        # the record's volume_id); None: the group has none yet, this agent copies it.
        holder = known.holder_in(self.ledger.group)
        mine = self.ledger.group is None or holder == self.volume_id
        if mine and self.volume.has_copy(known.sha256):
            self.ledger.advance(known)  # LATEST may still need advancing after a crash
            return Result(Outcome.ALREADY_DONE, event, known)
        if holder is not None and holder != self.volume_id:
            # Copied by another member of the fleet (a redelivery after it was killed
            # between its ledger write and its DeleteMessage): its volume holds the copy.
            self.ledger.advance(known)  # LATEST may still need advancing after a crash
            log.info(
                "backup.held_elsewhere",
                bucket=event.bucket,
                key=event.key,
                version_token=event.version_token,
                holder=holder,
            )
            return Result(Outcome.ALREADY_DONE, event, known)
        return None

    def _held_elsewhere(self, event: ObjectEvent) -> tuple[VersionRecord, str] | None:
        """The ledger's record of `event`'s version and the volume that holds it for this
        agent's replica group (without replicas: the record's), if that is another volume."""
        known = self.ledger.get_version(event.bucket, event.key, event.version_token)
        if known is None or not known.sha256:
            return None
        holder = known.holder_in(self.ledger.group)
        if holder is None or holder == self.volume_id:
            return None
        return known, holder

    def _log_duplicate(self, event: ObjectEvent) -> None:
        log.info(
            "backup.duplicate",
            bucket=event.bucket,
            key=event.key,
            version_token=event.version_token,
        )

    def _download_and_store(
        self,
        event: ObjectEvent,
        before_commit: Callable[[], object] | None = None,
        *,
        sync_directory: bool = True,
    ) -> tuple[StoredCopy, dict[str, Any], datetime | None]:
        """The stored copy, what S3 holds besides the bytes (`OBJECT_ATTRIBUTES`): the
        headers and user metadata of this GetObject's response, and the tags; and the
        version's LastModified."""
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
            # read before the copy: a failed tag request then costs no write, and no request
            # is made while the snapshot barrier is held
            attributes = {**attributes_of(response), "tags": self._tags(event, response)}
            attributes["category"] = self.categories.name(
                event.key, attributes["content_type"], attributes["tags"]
            )
            copy = self.volume.write_copy(
                _chunks(body, self.compression.chunk_bytes),
                self.compression,
                Expectation(size=length, md5_hex=_md5_from_etag(response)),
                before_commit=before_commit,
                sync_directory=sync_directory,
            )
            last_modified = response.get("LastModified")
            return copy, attributes, last_modified if isinstance(last_modified, datetime) else None
        except (botocore.exceptions.BotoCoreError, ConnectionError, TimeoutError) as exc:
            raise classify(exc, f"S3 read of s3://{event.bucket}/{event.key}") from exc
        finally:
            body.close()

    def _tags(self, event: ObjectEvent, response: dict[str, Any]) -> dict[str, str] | None:
        """The version's tags: one GetObjectTagging (with its VersionId when it has one) when
        the GetObject said the version has some; or None when storage.record_tags is off or
        S3 would not tell (refused: said once per bucket, the backup goes on without them;
        the version gone since the GET).

        GetObject answers `x-amz-tagging-count` (TagCount) "when you have the relevant
        permission to read object tags" (https://docs.aws.amazon.com/AmazonS3/latest/API/API_GetObject.html),
        so its absence means "no tags" only where reading tags is allowed: the request is
        still made until one has succeeded in the bucket (with or without a VersionId, the
        two permissions), and again after every `TAG_PROOF_SKIPS` answers skipped there (a
        permission withdrawn since is seen, at the price of one request in a thousand).

        Needs s3:GetObjectTagging, and s3:GetObjectVersionTagging for a VersionId
        (https://docs.aws.amazon.com/AmazonS3/latest/API/API_GetObjectTagging.html). An
        unversioned object's tags are read after its bytes, so an overwrite in between can
        lend it the newer object's tags (whose own event records them again).
        """
        if not self.record_tags:
            return None
        versioned = bool(event.version_id and event.version_id != "null")
        if not _tag_count(response) and self._skip_tag_request(event.bucket, versioned):
            return {}  # no request, so not in stats.tag_requests
        request: dict[str, Any] = {"Bucket": event.bucket, "Key": event.key}
        if versioned:
            request["VersionId"] = event.version_id
        if self.expected_bucket_owner:
            request["ExpectedBucketOwner"] = self.expected_bucket_owner
        what = f"S3 GetObjectTagging s3://{event.bucket}/{event.key}"
        try:
            answer = self.s3.get_object_tagging(**request)
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            self._tags_refused(event, exc, what)  # raises when worth a retry
            return None
        self.stats.record_tag_request("read")
        with self._tags_guard:
            self._tags_readable[(event.bucket, versioned)] = TAG_PROOF_SKIPS
        return tags_of(answer.get("TagSet", []))

    def _skip_tag_request(self, bucket: str, versioned: bool) -> bool:
        """May an answer without TagCount be taken as "no tags" here (and one skip used)?"""
        with self._tags_guard:
            left = self._tags_readable.get((bucket, versioned), 0)
            if left <= 0:
                return False
            self._tags_readable[(bucket, versioned)] = left - 1
            return True

    def _tags_refused(self, event: ObjectEvent, exc: Exception, what: str) -> None:
        """Count and say why GetObjectTagging failed; raise RetryableError when it may pass."""
        code = error_code(exc)
        if code in ("AccessDenied", "403"):
            self.stats.record_tag_request("denied")
            if event.bucket not in self._tags_denied:
                self._tags_denied.add(event.bucket)
                log.warning(
                    "backup.tags_denied",
                    bucket=event.bucket,
                    error=str(exc),
                    what_to_do=(
                        "grant s3:GetObjectTagging and s3:GetObjectVersionTagging (backup-agent"
                        " iam-policy), or set storage.record_tags: false; versions are backed"
                        " up without their tags meanwhile"
                    ),
                )
            return
        error = classify(exc, what)
        if isinstance(error, ObjectGone):  # deleted or replaced since the GET
            self.stats.record_tag_request("missing")
            return
        self.stats.record_tag_request("failed")
        if isinstance(error, RetryableError):
            raise error from exc
        log.warning("backup.tags_unreadable", bucket=event.bucket, key=event.key, error=str(error))

    def _get_object(self, event: ObjectEvent) -> dict[str, Any]:
        request: dict[str, Any] = {"Bucket": event.bucket, "Key": event.key}
        if event.version_id and event.version_id != "null":
            request["VersionId"] = event.version_id
        elif event.etag:
            request["IfMatch"] = f'"{event.etag.strip(chr(34))}"'
        if self.expected_bucket_owner:
            request["ExpectedBucketOwner"] = self.expected_bucket_owner
        try:
            response = cast("dict[str, Any]", self.s3.get_object(**request))
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            what = f"S3 GetObject s3://{event.bucket}/{event.key}"
            unreadable = _unreadable(exc, what)
            if unreadable is not None:
                raise unreadable from exc
            raise classify(exc, what) from exc
        return response


def _tag_count(response: dict[str, Any]) -> int:
    """GetObject's TagCount: the version's number of tags; 0 when S3 did not say."""
    count = response.get("TagCount")
    return count if isinstance(count, int) and count > 0 else 0


def _unreadable(exc: BaseException, what: str) -> ObjectUnreadable | None:
    """Is this GetObject error S3 saying it holds the version but will not serve it?

    * InvalidObjectState (403): "Object is archived and inaccessible until restored" for
      GLACIER, DEEP_ARCHIVE and the Intelligent-Tiering Archive / Deep Archive Access tiers;
      the error carries StorageClass and AccessTier
      (https://docs.aws.amazon.com/AmazonS3/latest/API/API_GetObject.html).
    * 400 InvalidRequest "The object was stored using a form of Server Side Encryption. The
      correct parameters must be provided to retrieve the object.": SSE-C, whose GETs need the
      customer-provided key (https://docs.aws.amazon.com/AmazonS3/latest/userguide/ServerSideEncryptionCustomerKeys.html).
    """
    if not isinstance(exc, botocore.exceptions.ClientError):
        return None
    response = exc.response
    error = response.get("Error", {})
    code = error_code(exc)
    if code == "InvalidObjectState":
        storage_class = str(response.get("StorageClass") or error.get("StorageClass") or "")
        tier = str(response.get("AccessTier") or error.get("AccessTier") or "")
        if storage_class and tier:
            storage_class = f"{storage_class}/{tier}"
        return ObjectUnreadable(ARCHIVED, storage_class or None, f"{what}: {code}: {exc}")
    message = str(error.get("Message", "")).lower()
    if code == "InvalidRequest" and (
        "server side encryption" in message
        or "customer-provided" in message
        or "customer provided" in message
    ):
        return ObjectUnreadable(SSE_C, None, f"{what}: {code}: {exc}")
    return None


def _same_version(record: VersionRecord, event: ObjectEvent) -> bool:
    if event.version_id and event.version_id != "null":
        return record.version_id == event.version_id
    return bool(event.etag) and (record.etag or "").strip('"') == (event.etag or "").strip('"')


def _in_place_of(unreadable: VersionRecord, record: VersionRecord) -> VersionRecord:
    """The readable record of a version recorded earlier as unreadable takes its place in the
    key's order (the version's own sequencer and time, not the restore's) and its token."""
    prefix = f"{unreadable.unreadable}:"
    return dataclasses.replace(
        record,
        version_token=unreadable.version_token.removeprefix(prefix),
        order_key=unreadable.order_key,
        event_time=unreadable.event_time,
        sequencer=unreadable.sequencer,
    )


def _at_its_own_time(record: VersionRecord, last_modified: datetime) -> VersionRecord:
    """A version restored from an archive that was never recorded (its ObjectCreated event
    lost, or handled before this release): its place in the key's order is its own
    LastModified, as reconcile would list it, not the time of the restore, which would put
    an old version above newer ones (docs/archived-objects.md)."""
    return dataclasses.replace(
        record,
        order_key=order.listed_key(last_modified, 0),
        event_time=last_modified.astimezone(UTC).isoformat(),
    )


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
