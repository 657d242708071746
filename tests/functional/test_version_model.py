"""Model-based test (issue 15): random histories of a versioned bucket, and after every
step every restore path must bring back what S3 served.

The system under test is the agent's own code — `BackupService.process` for each event,
`Reconciler.run_once`, the ledger (moto DynamoDB), the journal, and the restore's `select`
and `plan` — against a real versioned bucket (moto, in process). The model is the test's
own record of S3's version stack, checked against S3 itself (GetObject without VersionId)
at every step. Rules, over three keys (one a prefix of another):

* put, and delete (a delete marker), whose event is delivered at once, later, or never;
* a permanent delete (``DeleteObject`` with a VersionId) of the current version, an older
  one, or a delete marker; its event likewise;
* S3 Lifecycle: the expiration of a current version (a delete marker,
  ``LifecycleExpiration:DeleteMarkerCreated``), of a noncurrent version (deleted for good,
  ``LifecycleExpiration:Delete``), and of an expired object delete marker (the only entry
  left, ``LifecycleExpiration:Delete``); the transition of a version to GLACIER or
  DEEP_ARCHIVE (same VersionId and bytes; GetObject answers ``InvalidObjectState``), and
  the restore of an archived version (``ObjectRestore:Completed``), its event likewise;
* delivering a held-back event (reordered), delivering one again (a duplicate, or a
  stale redrive from the DLQ long after), and reconcile.

Where moto differs from S3 (docs/testing.md): moto has no lifecycle engine, so an
expiration is made with the DeleteObject that has the same effect (S3 documents the effect:
https://docs.aws.amazon.com/AmazonS3/latest/userguide/lifecycle-expire-general-considerations.html),
and a transition sets the version's storage class in moto's own backend, in place, as S3's
transition does (`archive`); moto's RestoreObject ignores VersionId, so a restore calls the
version's own `restore` in moto's backend (`restore_from_archive`). S3 dates a lifecycle
delete marker at 00:00 UTC of its day (LastModified), not when it was made; the model dates
it when made (not modelled). The transition's ``s3:LifecycleTransition`` event is ignored
by the agent and not sent.

Events are hand-made as S3 sends them (moto sends no versionId or sequencer, and nothing
for a delete marker). One clock, advanced a second and a bit per step, stamps S3's versions
(moto's `LastModified`), the events and the agent; nothing sleeps.

What is checked after every step, for the keys the step touched:

* S3's answer equals the model's (the model is checked too);
* now, and at every earlier step's time: `--key` (the key's history) and, for now, `--all`
  (the ledger's LATEST), from DynamoDB and from the journal (`--offline`), restore exactly
  the bytes S3 held then, or nothing when the key was absent — whenever the backup can
  know it: the version S3 served was backed up (its event delivered while it existed and
  was readable, or a reconcile ran then), and no backed-up version had been deleted for
  good by then without the backup's record saying so by then (the removal's event
  delivered; or reconcile, which dates a removal it finds at its own run);
* a version the backup met only while it was archived is that version, recorded as
  archived with its storage class (`--key` picks it and has no bytes; `--all` leaves the key
  out saying it is archived): never lost, never another version's bytes.

`make test` runs a fixed, bounded set (derandomized: 15 examples of up to 25 steps, about
30 s of CPU); `make soak` 400 examples of up to 40 steps.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import boto3
import moto.s3.models
import pytest
import structlog
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from moto import mock_aws

from agent.config import ReconcileConfig
from agent.events import ObjectEvent
from agent.lifecycle.context import Pacer
from agent.lifecycle.reconcile import Reconciler
from agent.records import VersionRecord
from agent.restore.plan import RestoreScope, plan
from agent.restore.source import JournalSource, LedgerSource, RestoreSource, Selector
from agent.storage.journal import Journal
from agent.storage.ledger import Ledger, table_definition
from agent.storage.volume import CompressionSettings, Volume
from tests.support.aws import REGION
from tests.support.service import make_service
from tests.support.truth import T0, Bucket, S3Clock, chosen_from

KEYS = ("a.txt", "a.txt/b", "c.txt")
ACCOUNT = "123456789012"  # moto's default account
BODIES = (b"one", b"two", b"one", b"three!", b"")
FATES = st.sampled_from(["now", "now", "later", "lost"])  # what happens to the event


@dataclass(eq=False)
class Entry:
    """One element of a key's version stack in S3: a version (bytes) or a delete marker."""

    key: str
    version_id: str
    body: bytes | None  # None: a delete marker
    created: datetime
    removed: datetime | None = None  # deleted for good
    known: bool = False  # the backup has a record of it
    removal_dated: datetime | None = None  # when the backup's record says it was removed
    etag: str | None = None
    archived: str | None = None  # the archive storage class it was transitioned to
    restored: bool = False  # an archived version restored in S3: readable again
    known_archived: bool = False  # the backup has a record of it as archived (no bytes)

    def alive(self, at: datetime) -> bool:
        return self.created <= at and (self.removed is None or self.removed > at)

    @property
    def readable(self) -> bool:
        return self.body is not None and (self.archived is None or self.restored)


@dataclass(eq=False)
class Delivery:
    event: ObjectEvent
    entry: Entry
    removal: bool
    restore: bool = False  # ObjectRestore:Completed


ARCHIVED = "archived"  # what GetObject answers for an archived version: InvalidObjectState


@dataclass
class World:
    """One in-process moto for a whole run (clients are slow to make); each example gets a
    bucket and a table of its own."""

    s3: Any
    dynamodb: Any
    examples: itertools.count[int] = field(default_factory=itertools.count)


class VersionModel(RuleBasedStateMachine):
    world: World

    def __init__(self) -> None:
        super().__init__()
        self.clock = S3Clock(T0)
        self._utcnow = moto.s3.models.utcnow
        moto.s3.models.utcnow = lambda: self.clock.now.replace(tzinfo=None)
        n = next(self.world.examples)
        self.name, table = f"model-bucket-{n}", f"model-table-{n}"
        self.s3 = self.world.s3
        self.s3.create_bucket(Bucket=self.name)
        self.world.dynamodb.create_table(**table_definition(table))
        self.bucket = Bucket(self.s3, self.clock, name=self.name)
        self.root = Path(tempfile.mkdtemp(prefix="version-model-"))
        self.volume = Volume(self.root)
        self.volume.initialise("vol-model")
        self.volume.open()
        self.ledger = Ledger(self.world.dynamodb, table)
        self.service = make_service(
            SimpleNamespace(s3=self.s3, dynamodb=self.world.dynamodb),
            self.volume,
            ledger=self.ledger,
            buckets=frozenset([self.name]),
            clock=self.clock,
            compression=CompressionSettings(threads=1),
        )
        self.entries: list[Entry] = []
        self.held_back: list[Delivery] = []
        self.delivered: list[Delivery] = []
        self.steps: list[datetime] = []
        self.touched: set[str] = set(KEYS)  # keys whose S3 state or backup changed
        self.s3_touched: set[str] = set()  # keys whose S3 state changed
        self.changed = False  # anything since the last reconcile (else it has nothing to do)
        self._bytes: dict[str, bytes] = {}

    def teardown(self) -> None:
        moto.s3.models.utcnow = self._utcnow
        shutil.rmtree(self.root, ignore_errors=True)

    # -- the world: S3 changes, and what becomes of their events -------------------------

    def tick(self) -> datetime:
        """A step a second (and some milliseconds) after the last: S3's LastModified has
        whole seconds, so versions of different steps never share one."""
        self.clock.advance(seconds=1, milliseconds=1 + 37 * (len(self.steps) % 7))
        self.steps.append(self.clock.now)
        return self.clock.now

    def dispatch(self, delivery: Delivery, fate: str) -> None:
        self.changed = True
        if fate == "now":
            self.deliver(delivery)
        elif fate == "later":
            self.held_back.append(delivery)
        # "lost": a purged queue; only reconcile can make up for it

    def deliver(self, delivery: Delivery) -> None:
        self.service.process(delivery.event)
        entry = delivery.entry
        self.touched.add(entry.key)
        if delivery.removal:
            entry.removal_dated = entry.removal_dated or entry.removed  # the event's time
        elif entry.body is None:
            entry.known = True  # a marker: nothing to read
        elif entry.alive(self.clock.now):  # a version deleted for good meanwhile cannot be read
            if entry.readable:
                entry.known = True
            elif not delivery.restore:
                entry.known_archived = True  # GetObject: InvalidObjectState
        if delivery not in self.delivered:
            self.delivered.append(delivery)

    @rule(key=st.sampled_from(KEYS), body=st.sampled_from(BODIES), fate=FATES)
    def put(self, key: str, body: bytes, fate: str) -> None:
        now = self.tick()
        version, event = self.bucket.put(key, body)
        entry = Entry(key, version, body, now, etag=event.etag)
        self.touched.add(key)
        self.s3_touched.add(key)
        self.entries.append(entry)
        self.dispatch(Delivery(event, entry, removal=False), fate)

    @precondition(lambda self: any(e.removed is None for e in self.entries))
    @rule(key=st.sampled_from(KEYS), fate=FATES)
    def delete(self, key: str, fate: str) -> None:
        """A simple DELETE: a delete marker. (moto makes none for a key without any
        version, where S3 would; the model deletes keys that have one.)"""
        if not any(e.key == key and e.removed is None for e in self.entries):
            key = next(e.key for e in self.entries if e.removed is None)
        now = self.tick()
        marker, event = self.bucket.delete(key)
        entry = Entry(key, marker, None, now)
        self.touched.add(key)
        self.s3_touched.add(key)
        self.entries.append(entry)
        self.dispatch(Delivery(event, entry, removal=False), fate)

    @precondition(lambda self: any(e.removed is None for e in self.entries))
    @rule(which=st.sampled_from(["current", "older", "marker"]), pick=st.integers(0, 5), fate=FATES)
    def delete_for_good(self, which: str, pick: int, fate: str) -> None:
        alive = [e for e in self.entries if e.removed is None]
        tops = {e.key: e for e in alive}  # the newest alive entry of each key
        wanted = {
            "current": [e for e in alive if tops[e.key] is e],
            "older": [e for e in alive if tops[e.key] is not e],
            "marker": [e for e in alive if e.body is None],
        }[which] or alive
        entry = wanted[pick % len(wanted)]
        now = self.tick()
        event = self.bucket.delete_version(entry.key, entry.version_id)
        entry.removed = now
        self.touched.add(entry.key)
        self.s3_touched.add(entry.key)
        self.dispatch(Delivery(event, entry, removal=True), fate)

    def expirable(self) -> list[tuple[str, Entry]]:
        """What S3 Lifecycle can expire now: a current version (not a marker), a noncurrent
        version, an expired object delete marker (a marker with no other entry left)."""
        alive = [e for e in self.entries if e.removed is None]
        tops = {e.key: e for e in alive}
        options: list[tuple[str, Entry]] = []
        for entry in alive:
            if entry.body is None:
                if all(e is entry for e in alive if e.key == entry.key):
                    options.append(("expired marker", entry))
            elif tops[entry.key] is entry:
                options.append(("current", entry))
            else:
                options.append(("noncurrent", entry))
        return options

    @precondition(lambda self: self.expirable())
    @rule(pick=st.integers(0, 11), fate=FATES)
    def lifecycle_expiration(self, pick: int, fate: str) -> None:
        """S3 Lifecycle's Expiration (a current version: a delete marker is added,
        LifecycleExpiration:DeleteMarkerCreated), NoncurrentVersionExpiration and
        ExpiredObjectDeleteMarker (deleted for good, LifecycleExpiration:Delete). moto has no
        lifecycle engine: the DeleteObject with the same effect, and the event S3 sends."""
        options = self.expirable()
        kind, entry = options[pick % len(options)]
        now = self.tick()
        self.touched.add(entry.key)
        self.s3_touched.add(entry.key)
        if kind == "current":
            marker = str(self.s3.delete_object(Bucket=self.name, Key=entry.key)["VersionId"])
            event = self.bucket.event(
                entry.key, "LifecycleExpiration:DeleteMarkerCreated", versionId=marker
            )
            created = Entry(entry.key, marker, None, now)
            self.entries.append(created)
            self.dispatch(Delivery(event, created, removal=False), fate)
            return
        self.s3.delete_object(Bucket=self.name, Key=entry.key, VersionId=entry.version_id)
        event = self.bucket.event(
            entry.key, "LifecycleExpiration:Delete", versionId=entry.version_id
        )
        entry.removed = now
        self.dispatch(Delivery(event, entry, removal=True), fate)

    def moto_version(self, entry: Entry) -> Any:
        """The version in moto's own backend (the in-process one of `mock_aws`)."""
        bucket = moto.s3.models.s3_backends[ACCOUNT]["aws"].buckets[self.name]
        versions = bucket.keys.getlist(entry.key)
        return next(v for v in versions if str(v.version_id) == entry.version_id)

    @precondition(
        lambda self: any(
            e.removed is None and e.body is not None and not e.archived for e in self.entries
        )
    )
    @rule(pick=st.integers(0, 11), storage_class=st.sampled_from(["GLACIER", "DEEP_ARCHIVE"]))
    def archive(self, pick: int, storage_class: str) -> None:
        """S3 Lifecycle transitions a version to an archive class, in place: the same VersionId
        and bytes, and GetObject answers InvalidObjectState until it is restored. moto has no
        lifecycle engine: its backend's version gets the storage class (as a PutObject with
        StorageClass would). S3 sends s3:LifecycleTransition, which the agent ignores."""
        candidates = [
            e for e in self.entries if e.removed is None and e.body is not None and not e.archived
        ]
        entry = candidates[pick % len(candidates)]
        self.tick()
        self.moto_version(entry).set_storage_class(storage_class)
        entry.archived = storage_class
        self.touched.add(entry.key)
        self.s3_touched.add(entry.key)
        self.changed = True

    @precondition(
        lambda self: any(e.removed is None and e.archived and not e.restored for e in self.entries)
    )
    @rule(pick=st.integers(0, 11), fate=FATES)
    def restore_from_archive(self, pick: int, fate: str) -> None:
        """RestoreObject with the version's VersionId has completed: a readable copy for some
        days (the model never reaches its end), and S3 sends ObjectRestore:Completed. moto's
        RestoreObject acts on the current version whatever the VersionId: the version's own
        `restore` in moto's backend does what S3 does."""
        candidates = [
            e for e in self.entries if e.removed is None and e.archived and not e.restored
        ]
        entry = candidates[pick % len(candidates)]
        self.tick()
        self.moto_version(entry).restore(1)
        entry.restored = True
        self.touched.add(entry.key)
        self.s3_touched.add(entry.key)
        assert entry.body is not None
        event = self.bucket.event(
            entry.key,
            "ObjectRestore:Completed",
            versionId=entry.version_id,
            size=len(entry.body),
            eTag=entry.etag,
        )
        self.dispatch(Delivery(event, entry, removal=False, restore=True), fate)

    @precondition(lambda self: self.held_back)
    @rule(pick=st.integers(0, 7))
    def deliver_held_back(self, pick: int) -> None:
        """A delivery out of order: events S3 sent later may already have been handled."""
        self.tick()
        self.deliver(self.held_back.pop(pick % len(self.held_back)))

    @precondition(lambda self: self.delivered)
    @rule(pick=st.integers(0, 7))
    def deliver_again(self, pick: int) -> None:
        """A duplicate delivery, or a stale redrive from the DLQ long after the fact."""
        self.tick()
        self.deliver(self.delivered[-1 - pick % len(self.delivered)])

    @precondition(lambda self: self.changed)
    @rule()
    def reconcile(self) -> None:
        now = self.tick()
        self.changed = False
        Reconciler(
            s3=self.s3,
            ledger=self.ledger,
            service=self.service,
            volume=self.volume,
            buckets=[self.name],
            settings=ReconcileConfig(include_noncurrent=True),
            clock=self.clock,
            limiter=Pacer(10_000, sleep=lambda s: None),
        ).run_once()
        self.touched.update(KEYS)
        for entry in self.entries:
            if entry.alive(now) and (entry.body is None or entry.readable):
                entry.known = True
            elif entry.alive(now):
                entry.known_archived = True
            elif entry.known and entry.removed is not None and entry.removal_dated is None:
                entry.removal_dated = now  # found missing in the listing: dated now

    # -- the model: what S3 served, and when the backup can know it ----------------------

    def top(self, key: str, at: datetime) -> Entry | None:
        alive = [e for e in self.entries if e.key == key and e.alive(at)]
        return alive[-1] if alive else None

    def served(self, key: str, at: datetime) -> bytes | None:
        """The bytes S3 held as the key's content at `at` (None: absent)."""
        entry = self.top(key, at)
        return None if entry is None else entry.body

    def answers(self, key: str) -> bytes | str | None:
        """What GetObject without VersionId answers now: bytes, 404 (None), or ARCHIVED."""
        entry = self.top(key, self.clock.now)
        if entry is not None and entry.body is not None and not entry.readable:
            return ARCHIVED
        return None if entry is None else entry.body

    def s3_answers(self, key: str) -> bytes | str | None:
        try:
            return self.bucket.served(key)
        except self.s3.exceptions.InvalidObjectState:
            return ARCHIVED

    def archived_top(self, key: str, at: datetime) -> Entry | None:
        """The version S3 held at `at`, when the backup met it only while it was archived."""
        top = self.top(key, at)
        if top is not None and not top.known and top.known_archived:
            return top
        return None

    def knowable(self, key: str, at: datetime, *, archived: bool = False) -> bool:
        """Can the backup know what S3 served at `at`? The version S3 served (if any) was
        backed up (or, with `archived`, recorded as archived), and no backed-up version of
        the key had been deleted for good by then without the backup's record saying so by
        then (its event lost or still held back: reconcile dates such a removal when it
        finds it)."""
        top = self.top(key, at)
        if top is not None and not top.known and not (archived and top.known_archived):
            return False
        return not any(
            (e.known or e.known_archived)
            and e.removed is not None
            and e.removed <= at
            and (e.removal_dated is None or e.removal_dated > at)
            for e in self.entries
            if e.key == key
        )

    # -- the check ---------------------------------------------------------------------

    def content(self, record: VersionRecord | None) -> bytes | None:
        if record is None or record.sha256 is None:
            return None
        if record.sha256 not in self._bytes:
            with self.volume.open_copy(record.sha256) as reader:
                self._bytes[record.sha256] = reader.read()
        return self._bytes[record.sha256]

    @invariant()
    def restore_equals_what_s3_served(self) -> None:
        """Checked for the keys this step touched (the others' answers cannot change)."""
        if not self.steps:
            return
        now = self.clock.now
        sources: list[RestoreSource] = [
            LedgerSource(self.ledger),
            JournalSource(Journal(self.volume.journal_dir)),
        ]
        for source in sources:
            everything = plan(source, self.name, RestoreScope.everything(), Selector())
            by_prefix = {item.key: item.record for item in everything.items}
            left_out = {choice.key: choice.reason for choice in everything.skipped}
            for key in sorted(self.touched):
                where = f"{key} from {source.name}"
                expected = self.served(key, now)
                if source is sources[0] and key in self.s3_touched:
                    assert self.s3_answers(key) == self.answers(key), f"the model of S3 ({key})"
                history = source.history(self.name, key)
                if (cold := self.archived_top(key, now)) and self.knowable(key, now, archived=True):
                    self.check_archived(cold, chosen_from(key, history), where)
                    assert key not in by_prefix, f"--all {where}: archived, left out"
                    assert "archived in S3" in left_out.get(key, ""), f"--all {where}: says why"
                for at in self.steps:
                    cold = self.archived_top(key, at)
                    if cold and self.knowable(key, at, archived=True):
                        got = chosen_from(key, history, at=at)
                        self.check_archived(cold, got, f"--at {at.isoformat()} {where}")
                if self.knowable(key, now):
                    assert self.content(chosen_from(key, history)) == expected, f"--key {where}"
                    got = self.content(by_prefix.get(key))
                    assert got == expected, f"--all {where}"
                for at in self.steps:
                    if self.knowable(key, at):
                        got = self.content(chosen_from(key, history, at=at))
                        assert got == self.served(key, at), f"--at {at.isoformat()} {where}"
        self.touched.clear()
        self.s3_touched.clear()

    @staticmethod
    def check_archived(entry: Entry, record: VersionRecord | None, where: str) -> None:
        """The version S3 held, recorded as archived with its storage class: not another."""
        assert record is not None, f"{where}: the archived version is lost"
        assert (record.version_id, record.sha256) == (entry.version_id, None), where
        assert (record.unreadable, record.storage_class) == ("archived", entry.archived), where


@contextlib.contextmanager
def _restored(owner: Any, name: str, value: Any) -> Iterator[None]:
    try:
        yield
    finally:
        setattr(owner, name, value)


def run_model(examples: int, steps: int) -> None:
    # errors only: a run makes thousands of backups
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    utcnow = moto.s3.models.utcnow  # each example sets its clock; put back whatever happens
    with mock_aws(), _restored(moto.s3.models, "utcnow", utcnow):
        session = boto3.session.Session(region_name=REGION)
        VersionModel.world = World(session.client("s3"), session.client("dynamodb"))
        run_state_machine_as_test(
            VersionModel,
            settings=settings(
                max_examples=examples,
                stateful_step_count=steps,
                derandomize=True,
                database=None,
                deadline=None,
                report_multiple_bugs=False,
                # no "explain" phase: its tracing makes each step many times slower
                phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
            ),
        )


def test_every_restore_path_brings_back_what_s3_served() -> None:
    run_model(examples=int(os.environ.get("MODEL_EXAMPLES", 15)), steps=25)


@pytest.mark.soak
@pytest.mark.timeout(0)
def test_every_restore_path_brings_back_what_s3_served_soak() -> None:
    run_model(examples=400, steps=40)
