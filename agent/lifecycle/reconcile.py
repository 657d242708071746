"""Reconcile / backfill: list each bucket and back up what the ledger lacks.

Kept whole: one job; its listing (`Listed`, `list_bucket`) exists only to feed the
comparison, and a listed entry turns into reconcile's own event.

Events get lost (a purged queue, notifications configured after the bucket filled,
a long outage). A reconcile run lists every bucket — ``ListObjectVersions`` when
versioning is (or was) enabled, ``ListObjectsV2`` otherwise — and compares each key
with the ledger:

* unversioned objects (and the ``null`` version): up to date when LATEST is a live
  version with the same eTag and size; otherwise the object is backed up (GetObject
  with ``IfMatch``, so a concurrent overwrite is never recorded under the old eTag);
* versions: backed up when the ledger has no record of that VersionId. Noncurrent
  versions are backed up only when retention would keep them (else the next
  retention run would only expire them again), and only with ``include_noncurrent``;
* with replicas (``fleet.replicas`` > 1), a version the ledger records that this member's
  replica group does not hold (no holder for the group; an item written before replicas:
  not this volume) is missing *for the group*: backed up the same way (the same rules for
  noncurrent versions), under the record's own token and order, so the ledger's
  conditional holder write adds the group (docs/fleet.md "Changing R"). Delete markers and
  archived records hold no copy and are not replicated;
* a delete marker that is the current version and a ledger whose LATEST is live:
  a tombstone is recorded;
* a version or marker the ledger holds (not removed) that the listing lacks: deleted
  for good while its event was lost. A removal is recorded, dated now, once
  HeadObject with its VersionId answers 404 (one created after the listing is there);
* a key the ledger holds as live that the listing lacks (a lost delete): the removals
  above, and for what has no version id, a tombstone once HeadObject confirms the key
  is gone (a merge of the ledger's key index with the listing, both in UTF-8 byte
  order).

One Query per key reads the key's LATEST and records together. Backups go through
`BackupService.process`, exactly like live events. A listed version takes its place in
the version order from its LastModified and its rank in the listing (agent/order.py).
S3's listing is the authority on what is current: when the ledger's current version
(agent/history.py) is not the one the listing marks ``IsLatest``, reconcile makes it
so, in either direction (`_agree`): after the removals above, any entry still above it
(a same-second tie; a multipart upload's LastModified, which can be when it began) stays,
and the current version is given a place just after it (a journal ``order`` note, then
the ledger item).

Resumable: ``state/reconcile.json`` on the volume holds, per bucket, the last key fully
handled (saved every ``checkpoint_every`` keys and at the end of each bucket); a run
after a crash continues after it. Keys handled since the last checkpoint are compared
again and found up to date. Rate-limited to ``objects_per_second`` backups so live
events keep their share of bandwidth and DynamoDB capacity.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, cast

import botocore.exceptions
import structlog

from agent import history, order
from agent.aws import classify, error_code
from agent.config import ReconcileConfig
from agent.errors import BackupAgentError, ObjectGone
from agent.events import EventKind, ObjectEvent
from agent.lifecycle.context import Clock, LifecycleContext, Pacer, StateFile, utc_now
from agent.lifecycle.retention import Entry, RetentionPolicy
from agent.pipeline.backup import BackupService, Outcome
from agent.records import VersionRecord
from agent.stats import Stats
from agent.storage.ledger import Ledger
from agent.storage.volume import Volume

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = structlog.get_logger("agent.reconcile")

CHECKPOINT_NAME = "reconcile.json"
EVENT_NAME = "ObjectCreated:Reconcile"
DELETE_EVENT_NAME = "ObjectRemoved:ReconcileDeleteMarker"
REMOVED_EVENT_NAME = "ObjectRemoved:ReconcileRemoved"  # a version deleted for good
REPLICA_EVENT_NAME = "ObjectCreated:ReconcileReplica"  # a recorded version, for this group


@dataclass(frozen=True, slots=True)
class Listed:
    """One entry of a bucket listing: a version, a delete marker or an unversioned object."""

    key: str
    last_modified: datetime
    is_latest: bool
    version_id: str | None = None
    etag: str | None = None
    size: int | None = None
    delete_marker: bool = False

    def event(self, bucket: str) -> ObjectEvent:
        return ObjectEvent(
            kind=EventKind.REMOVED if self.delete_marker else EventKind.CREATED,
            bucket=bucket,
            key=self.key,
            event_name=DELETE_EVENT_NAME if self.delete_marker else EVENT_NAME,
            event_time=self.last_modified,
            version_id=self.version_id,
            etag=self.etag,
            size=self.size,
            delete_marker=self.delete_marker,
        )

    @property
    def unversioned(self) -> bool:
        return self.version_id in (None, "null")

    def token(self, bucket: str) -> str:
        token = self.event(bucket).version_token
        return "del:" + token if self.delete_marker else token


@dataclass
class ReconcileReport:
    listed: int = 0
    keys: int = 0
    up_to_date: int = 0
    backed_up: int = 0
    tombstoned: int = 0
    gone: int = 0
    failed: int = 0
    bytes: int = 0
    index_migrated: int = 0  # LATEST items moved to their key-index shard
    replicated: int = 0  # of backed_up: recorded versions copied for this replica group
    resumed: bool = False
    completed: bool = False
    dry_run: bool = False
    would_back_up: list[tuple[str, str, str | None]] = field(default_factory=list)


class Reconciler:
    """One reconcile pass over the configured buckets (`run_once`)."""

    def __init__(
        self,
        *,
        s3: S3Client,
        ledger: Ledger,
        service: BackupService,
        volume: Volume,
        buckets: Sequence[str],
        settings: ReconcileConfig,
        policy: RetentionPolicy | None = None,
        stats: Stats | None = None,
        clock: Clock = utc_now,
        limiter: Pacer | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self.s3 = s3
        self.ledger = ledger
        self.service = service
        self.buckets = list(buckets)
        self.settings = settings
        self.policy = policy or RetentionPolicy()
        self.stats = stats or Stats()
        self.clock = clock
        self.stop = stop or threading.Event()
        self.limiter = limiter or Pacer(settings.objects_per_second, sleep=self.stop.wait)
        self.checkpoint = StateFile(volume, CHECKPOINT_NAME)

    @classmethod
    def from_context(cls, ctx: LifecycleContext, stop: threading.Event | None = None) -> Reconciler:
        return cls(
            s3=ctx.clients.s3,
            ledger=ctx.ledger,
            service=ctx.service,
            volume=ctx.volume,
            buckets=ctx.config.buckets,
            settings=ctx.config.reconcile,
            policy=RetentionPolicy.from_config(ctx.config.retention),
            stats=ctx.stats,
            stop=stop,
        )

    # -- the run ---------------------------------------------------------------------

    def run_once(self, *, dry_run: bool = False) -> ReconcileReport:
        report = ReconcileReport(dry_run=dry_run)
        state = self._start_state(report)
        for bucket in self.buckets:
            progress = state["buckets"].setdefault(bucket, {"after": None, "done": False})
            if progress["done"]:
                continue
            self._reconcile_bucket(bucket, progress, state, report)
            if self.stop.is_set():
                log.info("reconcile.interrupted", bucket=bucket, after=progress["after"])
                return report
            progress["done"] = True
            self._save(state, dry_run)
        state["completed_at"] = self.clock().isoformat()
        self._save(state, dry_run)
        report.completed = True
        log.info("reconcile.finished", **_summary(report))
        return report

    def _start_state(self, report: ReconcileReport) -> dict[str, Any]:
        state = self.checkpoint.load()
        if state and not state.get("completed_at") and isinstance(state.get("buckets"), dict):
            report.resumed = True
            log.info("reconcile.resumed", started_at=state.get("started_at"), **state["buckets"])
            return state
        log.info("reconcile.started", buckets=self.buckets, dry_run=report.dry_run)
        return {"started_at": self.clock().isoformat(), "completed_at": None, "buckets": {}}

    def _save(self, state: dict[str, Any], dry_run: bool) -> None:
        if not dry_run:
            self.checkpoint.save(state)

    def _reconcile_bucket(
        self,
        bucket: str,
        progress: dict[str, Any],
        state: dict[str, Any],
        report: ReconcileReport,
    ) -> None:
        since_checkpoint = 0
        absent = _LedgerWalk(self.ledger.keys(bucket), after=progress["after"])
        for key, entries in self.list_bucket(bucket, after=progress["after"]):
            if self.stop.is_set():
                break
            for gone in absent.before(key):
                self.reconcile_absent(gone, report)
            report.keys += 1
            report.listed += len(entries)
            self.stats.count("reconcile.listed", len(entries))
            self.reconcile_key(bucket, key, entries, report)
            progress["after"] = key
            since_checkpoint += 1
            if since_checkpoint >= self.settings.checkpoint_every:
                self._save(state, report.dry_run)
                since_checkpoint = 0
                log.info("reconcile.progress", bucket=bucket, after=key, **_summary(report))
        if not self.stop.is_set():
            for gone in absent.before(None):
                self.reconcile_absent(gone, report)
            if not report.dry_run:
                report.index_migrated += self.ledger.migrate_key_index(bucket)
        self._save(state, report.dry_run)

    def reconcile_absent(self, latest: VersionRecord, report: ReconcileReport) -> None:
        """A key the ledger holds as live but the listing lacks: a delete whose event was lost.

        Confirmed with HeadObject before a tombstone is recorded (a key created after
        the listing passed it is simply there). The tombstone, dated now, is the newest
        entry of the key, so it becomes LATEST like any later change."""
        if history.is_removal(latest) or (latest.deleted and not _real(latest.version_id)):
            return  # nothing of it left in S3 that the ledger holds as there
        if self._exists(latest.bucket, latest.key):
            return
        records = self.ledger.versions(latest.bucket, latest.key)
        for record in _unlisted(records, set()):
            if not self._exists(latest.bucket, latest.key, record.version_id):
                self._record_removal(record, report)
        now = self.ledger.latest(latest.bucket, latest.key)
        if now is None or now.deleted:
            return
        log.info("reconcile.absent", bucket=latest.bucket, key=latest.key)
        event = ObjectEvent(
            kind=EventKind.REMOVED,
            bucket=latest.bucket,
            key=latest.key,
            event_name="ObjectRemoved:ReconcileAbsent",
            event_time=self.clock(),
        )
        entry = Listed(latest.key, event.event_time, is_latest=True, delete_marker=True)
        self._back_up(latest.bucket, entry, report, event)

    def _exists(self, bucket: str, key: str, version_id: str | None = None) -> bool:
        """HeadObject (of one version, when given): False only when S3 says 404."""
        request: dict[str, Any] = {"Bucket": bucket, "Key": key}
        if version_id is not None:
            request["VersionId"] = version_id
        if self.service.expected_bucket_owner:
            request["ExpectedBucketOwner"] = self.service.expected_bucket_owner
        try:
            self.s3.head_object(**request)
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            if version_id is not None and error_code(exc) in ("405", "MethodNotAllowed"):
                return True  # a delete marker: it exists, it has no bytes
            error = classify(exc, f"S3 HeadObject s3://{bucket}/{key}")
            if isinstance(error, ObjectGone):
                return False
            raise error from exc
        return True

    # -- one key ---------------------------------------------------------------------

    def reconcile_key(
        self, bucket: str, key: str, entries: Sequence[Listed], report: ReconcileReport
    ) -> None:
        """Back up what the ledger lacks of one key (entries: oldest first), record the
        versions S3 no longer has, then make the ledger's current version the one S3
        lists as current."""
        current = next((e for e in entries if e.is_latest), entries[-1])
        seen, records = self.ledger.state(bucket, key)
        wanted = self._wanted(bucket, entries, current)
        missing = self._missing(bucket, entries, current, seen, wanted, records)
        listed = {e.token(bucket) for e in entries}
        unlisted = _unlisted(records, listed)
        short = self._not_held(bucket, entries, current, wanted, records, missing)
        if not missing and not unlisted and not short and _agrees(bucket, seen, current):
            report.up_to_date += 1
            self.stats.count("reconcile.up_to_date")
            return
        ranks = {id(e): rank for rank, e in enumerate(entries)}
        for entry in missing:
            place = order.listed_key(entry.last_modified, ranks[id(entry)])
            self._back_up(bucket, entry, report, order_key=place)
        for entry, event, place in short:
            self._replicate(bucket, entry, event, place, report)
        if report.dry_run:
            return
        for record in unlisted:
            if not self._exists(bucket, key, record.version_id):
                self._record_removal(record, report)
        self._agree(bucket, key, entries, current)

    def _wanted(self, bucket: str, entries: Sequence[Listed], current: Listed) -> set[str]:
        if not self.settings.include_noncurrent:
            return {current.token(bucket)}
        listed = [
            Entry(e.token(bucket), e.last_modified, e.delete_marker, tiebreak=f"{i:09d}")
            for i, e in enumerate(entries)
        ]
        return self.policy.kept(listed, current.token(bucket), self.clock())

    def _missing(
        self,
        bucket: str,
        entries: Sequence[Listed],
        current: Listed,
        seen: VersionRecord | None,
        wanted: set[str],
        known: Sequence[VersionRecord],
    ) -> list[Listed]:
        if seen is None:
            missing = [e for e in entries if e.token(bucket) in wanted]
            # a key deleted before the ledger ever saw it, with nothing else to keep
            return [] if [e.delete_marker for e in missing] == [True] else missing
        if current.delete_marker and not seen.deleted:
            candidates = [current]
        elif current.unversioned and not current.delete_marker:
            matches = not seen.deleted and seen.etag == current.etag and seen.size == current.size
            candidates = [] if matches else [current]
        else:
            candidates = [] if seen.version_token == current.token(bucket) else [current]
        others = [e for e in entries if e is not current and e.token(bucket) in wanted]
        if others:
            candidates = [e for e in others if not _known(e, bucket, known)] + candidates
        return candidates

    def _holds(self, record: VersionRecord) -> bool:
        """Does this member's replica group hold `record`'s copy? Without replicas the
        question does not arise (True). An item written before replicas names no group:
        held when it names this volume (the ledger's holder write adds no group for it)."""
        group = self.service.ledger.group
        if group is None or record.holder_in(group) is not None:
            return True
        return record.holders is None and record.volume_id == self.service.volume_id

    def _not_held(
        self,
        bucket: str,
        entries: Sequence[Listed],
        current: Listed,
        wanted: set[str],
        records: Sequence[VersionRecord],
        missing: Sequence[Listed],
    ) -> list[tuple[Listed, ObjectEvent, str]]:
        """Listed versions the ledger records with a copy that this member's replica group
        does not hold, each with the event that backs it up under the record's own token
        (so the ledger write lands on the recorded item and adds the group as a holder).
        Only versions reconcile would back up if they were missing: the current one, and
        noncurrent ones retention keeps when ``include_noncurrent``."""
        if self.service.ledger.group is None:
            return []
        found: list[tuple[Listed, ObjectEvent, str]] = []
        for entry in entries:
            if entry.delete_marker or any(entry is m for m in missing):
                continue
            if entry is not current and entry.token(bucket) not in wanted:
                continue
            record = _record_of(bucket, entry, records)
            if record is None or record.deleted or not record.sha256 or record.unreadable:
                continue
            if self._holds(record):
                continue
            event = _replica_event(bucket, entry, record)
            if event is None:
                log.warning(
                    "reconcile.replica_skipped",
                    bucket=bucket,
                    key=entry.key,
                    version_token=record.version_token,
                    reason="the listed entry does not give the recorded version's token",
                )
                continue
            found.append((entry, event, record.order_key))
        return found

    def _replicate(
        self, bucket: str, entry: Listed, event: ObjectEvent, place: str, report: ReconcileReport
    ) -> None:
        """Copy a recorded version for this member's replica group (`_not_held`), in the
        recorded version's place in the order (this volume's journal agrees with the ledger)."""
        before = report.backed_up
        log.info(
            "reconcile.replicate",
            bucket=bucket,
            key=entry.key,
            version_id=entry.version_id,
            group=self.service.ledger.group,
            dry_run=report.dry_run,
        )
        self._back_up(bucket, entry, report, event, order_key=place)
        if report.backed_up > before:
            report.replicated += 1
            if not report.dry_run:
                self.stats.count("reconcile.replicated")

    def _back_up(
        self,
        bucket: str,
        entry: Listed,
        report: ReconcileReport,
        event: ObjectEvent | None = None,
        order_key: str | None = None,
    ) -> VersionRecord | None:
        if report.dry_run and entry.delete_marker:
            report.would_back_up.append((bucket, entry.key, "(deleted)"))
            report.tombstoned += 1
            return None
        if report.dry_run:
            report.would_back_up.append((bucket, entry.key, entry.version_id))
            report.backed_up += 1
            report.bytes += entry.size or 0
            return None
        self.limiter.acquire()
        try:
            result = self.service.process(event or entry.event(bucket), order_key=order_key)
        except BackupAgentError as exc:
            report.failed += 1
            self.stats.count("reconcile.failed")
            self.stats.record_failure(type(exc).__name__)
            log.error(
                "reconcile.object_failed",
                bucket=bucket,
                key=entry.key,
                version_id=entry.version_id,
                error=str(exc),
            )
            return None
        if result.outcome is Outcome.ALREADY_DONE:
            report.up_to_date += 1
            self.stats.count("reconcile.up_to_date")
            return result.record
        if result.outcome is Outcome.GONE:
            report.gone += 1
            self.stats.count("reconcile.gone")
            return None
        if result.outcome is Outcome.TOMBSTONED:
            report.tombstoned += 1
            self.stats.count("reconcile.tombstoned")
        elif result.outcome in (Outcome.STORED, Outcome.DEDUPLICATED):
            report.backed_up += 1
            report.bytes += result.copy.size if result.copy else 0
            self.stats.count("reconcile.backed_up")
            size = result.copy.size if result.copy else 0
            stored = result.copy.stored_size if result.copy and not result.copy.deduplicated else 0
            self.stats.record_success(result.outcome.value, size, stored, None)
        return result.record

    def _agree(self, bucket: str, key: str, entries: Sequence[Listed], current: Listed) -> None:
        """Make the ledger's current entry the listing's ``IsLatest`` one. Versions S3 no
        longer has were recorded as removed before; any entry still above the current one
        (a same-second tie, a multipart upload's LastModified) stays, and the current one
        is given a place just after it."""
        records = self.ledger.versions(bucket, key)
        target = _record_of(bucket, current, records)
        if target is None:
            return  # not backed up (failed, gone meanwhile, or a lone marker never needed)
        gone = {r.version_id for r in records if history.is_removal(r)}
        above = [
            r
            for r in records
            if not history.is_removal(r)
            and r.order_key > target.order_key
            and (r.version_id in (None, "null") or r.version_id not in gone)
        ]
        if not above:
            self.ledger.settle(bucket, key)
            return
        place = order.after(max(r.order_key for r in above))
        log.info(
            "reconcile.reordered",
            bucket=bucket,
            key=key,
            version_token=target.version_token,
            above=[r.version_token for r in above],
        )
        self.service.journal.append_order(target, place)
        self.ledger.reorder(target, place)

    def _record_removal(self, record: VersionRecord, report: ReconcileReport) -> None:
        log.info(
            "reconcile.removed_for_good",
            bucket=record.bucket,
            key=record.key,
            version_id=record.version_id,
        )
        event = ObjectEvent(
            kind=EventKind.REMOVED,
            bucket=record.bucket,
            key=record.key,
            event_name=REMOVED_EVENT_NAME,
            event_time=self.clock(),
            version_id=record.version_id,
        )
        entry = Listed(record.key, event.event_time, is_latest=False, delete_marker=True)
        self._back_up(record.bucket, entry, report, event)

    # -- listing ---------------------------------------------------------------------

    def list_bucket(self, bucket: str, after: str | None) -> Iterator[tuple[str, list[Listed]]]:
        """(key, entries oldest first) in key order, for keys after `after`."""
        try:
            status = self.s3.get_bucket_versioning(Bucket=bucket).get("Status")
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise classify(exc, f"S3 GetBucketVersioning {bucket}") from exc
        if status in ("Enabled", "Suspended"):
            return _group(self._versions(bucket, after))
        return ((e.key, [e]) for e in self._objects(bucket, after))

    def _objects(self, bucket: str, after: str | None) -> Iterator[Listed]:
        kwargs: dict[str, Any] = {"Bucket": bucket}
        if after:
            kwargs["StartAfter"] = after
        for page in self._pages("list_objects_v2", kwargs):
            for item in page.get("Contents", []):
                yield Listed(
                    key=item["Key"],
                    last_modified=_utc(item["LastModified"]),
                    is_latest=True,
                    etag=_strip_etag(item.get("ETag")),
                    size=int(item.get("Size", 0)),
                )

    def _versions(self, bucket: str, after: str | None) -> Iterator[Listed]:
        kwargs: dict[str, Any] = {"Bucket": bucket}
        if after:
            kwargs["KeyMarker"] = after  # without VersionIdMarker: keys after this one
        for page in self._pages("list_object_versions", kwargs):
            items = [_version(v, False) for v in page.get("Versions", [])]
            items += [_version(m, True) for m in page.get("DeleteMarkers", [])]
            items.sort(key=lambda e: e.key)  # stable: each list is newest first per key
            yield from items

    def _pages(
        self, operation: Literal["list_objects_v2", "list_object_versions"], kwargs: dict[str, Any]
    ) -> Iterator[dict[str, Any]]:
        if self.service.expected_bucket_owner:
            kwargs["ExpectedBucketOwner"] = self.service.expected_bucket_owner
        try:
            pages = self.s3.get_paginator(operation).paginate(**kwargs)
            yield from (cast("dict[str, Any]", page) for page in pages)
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise classify(exc, f"S3 {operation} {kwargs['Bucket']}") from exc


class _LedgerWalk:
    """The ledger's keys of a bucket in the listing's order (UTF-8 bytes), to spot keys
    the listing lacks by a merge, never holding a bucket's keys in memory."""

    def __init__(self, latest: Iterator[VersionRecord], after: str | None) -> None:
        self._latest = latest
        self._after = after.encode() if after is not None else None
        self._pending: VersionRecord | None = None

    def before(self, key: str | None) -> Iterator[VersionRecord]:
        """Ledger keys before `key` (None: all that remain); `key` itself is consumed."""
        bound = key.encode() if key is not None else None
        while True:
            record = self._pending or next(self._latest, None)
            self._pending = None
            if record is None:
                return
            mine = record.key.encode()
            if self._after is not None and mine <= self._after:
                continue
            if bound is not None and mine >= bound:
                if mine > bound:
                    self._pending = record  # not reached yet
                return
            yield record


def _group(entries: Iterable[Listed]) -> Iterator[tuple[str, list[Listed]]]:
    """Consecutive entries of one key, oldest first (pages may split a key)."""
    key: str | None = None
    bunch: list[Listed] = []
    for entry in entries:
        if entry.key != key and bunch:
            yield key or "", _oldest_first(bunch)
            bunch = []
        key = entry.key
        bunch.append(entry)
    if bunch:
        yield key or "", _oldest_first(bunch)


def _oldest_first(bunch: list[Listed]) -> list[Listed]:
    """S3 lists versions (and, separately, markers) newest first; LastModified has whole
    seconds, so ties keep the listing's order reversed, and the current one goes last."""
    versions = [e for e in bunch if not e.delete_marker][::-1]
    markers = [e for e in bunch if e.delete_marker][::-1]
    return sorted(versions + markers, key=lambda e: (e.is_latest, e.last_modified))


def _known(entry: Listed, bucket: str, known: Sequence[VersionRecord]) -> bool:
    if entry.unversioned and not entry.delete_marker:
        return any(
            not r.deleted and r.etag == entry.etag and r.size == entry.size
            for r in known
            if r.version_id in (None, "null")
        )
    return any(r.version_token == entry.token(bucket) for r in known)


def _replica_event(bucket: str, entry: Listed, record: VersionRecord) -> ObjectEvent | None:
    """The event that backs up listed `entry` as the recorded `record` (its token, its
    event time, its sequencer), or None when no event gives the record's token."""
    sequencer = record.version_token[2:] if record.version_token.startswith("s:") else None
    try:
        event_time = _utc(datetime.fromisoformat(record.event_time))
    except ValueError:
        return None
    event = ObjectEvent(
        kind=EventKind.CREATED,
        bucket=bucket,
        key=entry.key,
        event_name=REPLICA_EVENT_NAME,
        event_time=event_time,
        version_id=entry.version_id,
        etag=entry.etag,
        size=entry.size,
        sequencer=sequencer,
    )
    return event if event.version_token == record.version_token else None


def _real(version_id: str | None) -> bool:
    return version_id not in (None, "null")


def _unlisted(records: Sequence[VersionRecord], listed: set[str]) -> list[VersionRecord]:
    """Recorded versions and markers, not removed, that the listing lacks: deleted for
    good while the event was lost, or created after the listing (HeadObject tells)."""
    removed = {r.version_id for r in records if history.is_removal(r)}
    return [
        r
        for r in records
        if not history.is_removal(r)
        and _real(r.version_id)
        and r.version_id not in removed
        and r.version_token not in listed
    ]


def _agrees(bucket: str, seen: VersionRecord | None, current: Listed) -> bool:
    """Is the ledger's LATEST the entry S3 lists as current?"""
    if seen is None:
        return False
    if current.unversioned and not current.delete_marker:
        return not seen.deleted and seen.etag == current.etag and seen.size == current.size
    return seen.version_token == current.token(bucket)


def _record_of(
    bucket: str, entry: Listed, records: Sequence[VersionRecord]
) -> VersionRecord | None:
    """The ledger's record of a listed entry (an unversioned object: the newest stored
    copy with its eTag and size)."""
    if entry.unversioned and not entry.delete_marker:
        same = [
            r
            for r in records
            if r.version_id in (None, "null")
            and not r.deleted
            and r.etag == entry.etag
            and r.size == entry.size
        ]
        return same[-1] if same else None
    token = entry.token(bucket)
    return next((r for r in records if r.version_token == token), None)


def _version(item: dict[str, Any], delete_marker: bool) -> Listed:
    return Listed(
        key=item["Key"],
        last_modified=_utc(item["LastModified"]),
        is_latest=bool(item.get("IsLatest")),
        version_id=item.get("VersionId"),
        etag=None if delete_marker else _strip_etag(item.get("ETag")),
        size=None if delete_marker else int(item.get("Size", 0)),
        delete_marker=delete_marker,
    )


def _strip_etag(etag: str | None) -> str | None:
    return etag.strip('"') if etag else None


def _utc(value: datetime) -> datetime:
    return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)


def _summary(report: ReconcileReport) -> dict[str, Any]:
    return {
        "keys": report.keys,
        "listed": report.listed,
        "up_to_date": report.up_to_date,
        "backed_up": report.backed_up,
        "tombstoned": report.tombstoned,
        "gone": report.gone,
        "failed": report.failed,
        "bytes": report.bytes,
        "index_migrated": report.index_migrated,
        "replicated": report.replicated,
        "dry_run": report.dry_run,
    }
