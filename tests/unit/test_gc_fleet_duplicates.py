"""gc and a fleet member's lost duplicates, as a model (hypothesis stateful).

This member's volume copies versions; for each, its ledger write wins, loses to another
member that recorded the version first, or is still in flight (the journal line written,
the ledger write not yet). Other members record versions too, in this replica group or (with
replicas) in another. Time passes; gc runs. The oracle is the rule of agent/lifecycle/gc.py:

- never removed: a copy a journal record references whose version the ledger does not know
  (in flight, or this volume's alone), holds here, or holds on no volume for this group yet;
  nor a copy younger than the grace period;
- removed: a copy whose every referencing record was, at a gc run that looked at it (its
  backup time in that run's window), a version the ledger held on another volume for this
  group, once the copy is older than the grace period.

The ledger is a dictionary here (gc asks it `get_version` and `group`); the same questions
against moto's DynamoDB are tests/functional/test_gc_fleet_duplicates.py's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from agent.holders import held_by
from agent.lifecycle.gc import LOOK_BACK, GarbageCollector
from agent.records import VersionRecord
from agent.storage.journal import Journal
from agent.storage.volume import CompressionSettings, Volume
from tests.support.clock import FakeClock

ME, OTHER, ELSEWHERE = "vol-me", "vol-other", "vol-x"
GROUP, OTHER_GROUP = "queue-1", "queue-2"
GRACE = timedelta(hours=6)
T0 = datetime(2026, 12, 1, 6, tzinfo=UTC)
VERSIONS = tuple(f"v{n}" for n in range(6))
CONTENTS = (b"alpha", b"beta", b"gamma")  # versions share contents: one copy, many records
SETTINGS = CompressionSettings(level=1, threads=1)
Identity = tuple[str, str, str]


def identity(record: VersionRecord) -> Identity:
    return (record.bucket, record.key, record.version_token)


class FakeLedger:
    def __init__(self, group: str | None) -> None:
        self.group = group
        self.items: dict[Identity, VersionRecord] = {}

    def get_version(self, bucket: str, key: str, version_token: str) -> VersionRecord | None:
        return self.items.get((bucket, key, version_token))

    def write(self, record: VersionRecord, volume: str, group: str | None) -> bool:
        """The conditional write of `volume`'s copy in `group`: True when it became the
        holder (the first write, or the first of its group: `Ledger._add_holder`)."""
        known = self.items.get(identity(record))
        if known is None:
            holders = {group: volume} if group else None
            self.items[identity(record)] = dataclasses.replace(
                record, volume_id=volume, holders=holders
            )
            return True
        if group is None or (known.holders or {}).get(group):
            return False
        holders = {**(known.holders or {}), group: volume}
        self.items[identity(record)] = dataclasses.replace(known, holders=holders)
        return True


class Duplicates(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="gc-model-"))
        self.volume = Volume(self.tmp)
        self.volume.initialise(ME)
        self.volume.open()
        self.clock = FakeClock(T0)
        self.journal = Journal(self.volume.journal_dir, clock=self.clock)
        self.ledger = FakeLedger(None)
        self.mine: dict[Identity, VersionRecord] = {}  # this volume's journal records
        self.pending: set[Identity] = set()  # journalled, ledger write not yet done
        self.retired: set[Identity] = set()  # lost duplicates a gc run looked at
        self.since: datetime | None = None  # the next gc run's window start

    def teardown(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    @initialize(replicas=st.booleans())
    def start(self, replicas: bool) -> None:
        self.ledger.group = GROUP if replicas else None

    def _record(self, version: str, sha256: str) -> VersionRecord:
        return VersionRecord(
            bucket="company-documents", key=f"docs/{version}.txt", version_token=f"v:{version}",
            order_key="s1", event_name="ObjectCreated:Put", event_time=T0.isoformat(),
            backup_time=self.clock().isoformat(), volume_id=ME, sha256=sha256, size=5,
        )  # fmt: skip

    def _write(self, version: str) -> VersionRecord:
        content = CONTENTS[VERSIONS.index(version) % len(CONTENTS)]
        copy = self.volume.write_copy([content], SETTINGS)
        now = self.clock().timestamp()  # the copy's mtime, on the model's clock
        os.utime(self.volume.copy_path(copy.sha256), (now, now))
        return self._record(version, copy.sha256)

    @rule(version=st.sampled_from(VERSIONS), commit=st.booleans())
    def copy(self, version: str, commit: bool) -> None:
        """This member copies `version` and journals it; its ledger write now or later."""
        record = self._write(version)
        if identity(record) in self.mine:
            return  # a redelivery here: the copy was refreshed, nothing else
        self.journal.append(record)
        self.mine[identity(record)] = record
        if commit:
            self.ledger.write(record, ME, self.ledger.group)
        else:
            self.pending.add(identity(record))

    @precondition(lambda self: self.pending)
    @rule(data=st.data())
    def commit(self, data: st.DataObject) -> None:
        key = data.draw(st.sampled_from(sorted(self.pending)))
        self.pending.discard(key)
        self.ledger.write(self.mine[key], ME, self.ledger.group)

    @rule(version=st.sampled_from(VERSIONS), same_group=st.booleans(), tampered=st.booleans())
    def another_member_records(self, version: str, same_group: bool, tampered: bool) -> None:
        """Another member's conditional write of `version` (in this group, or another): the
        same bytes, so the same SHA-256, unless the item was `tampered` with."""
        group = self.ledger.group if same_group else OTHER_GROUP
        holder = OTHER if same_group else ELSEWHERE
        if self.ledger.group is None and not same_group:
            return  # no replica groups: one holder a version
        content = CONTENTS[VERSIONS.index(version) % len(CONTENTS)]
        sha = "f" * 64 if tampered else hashlib.sha256(content).hexdigest()
        self.ledger.write(self._record(version, sha), holder, group)

    @rule(hours=st.sampled_from((1, 5, 7, 30)))
    def wait(self, hours: int) -> None:
        self.clock.advance(hours=hours)

    def _lost(self, key: Identity) -> bool:
        known = self.ledger.items.get(key)
        if known is None or held_by(known, ME):
            return False
        holder = known.holder_in(self.ledger.group)
        same_bytes = known.sha256 == self.mine[key].sha256  # else untrusted: keep the copy
        return bool(holder) and holder != ME and same_bytes

    @rule()
    def gc(self) -> None:
        cutoff = self.clock() - GRACE
        before = {p.name[:64]: p.stat().st_mtime for p in self.volume.objects_dir.rglob("*.zst")}
        for key, record in self.mine.items():
            written = datetime.fromisoformat(record.backup_time)
            in_window = (self.since is None or written >= self.since) and written < cutoff
            if in_window and self._lost(key):
                self.retired.add(key)
        protected = {r.sha256 for k, r in self.mine.items() if k not in self.retired and r.sha256}
        report = GarbageCollector(
            volume=self.volume,
            journal=self.journal,
            grace_period=GRACE,
            clock=self.clock,
            ledger=self.ledger,
            volume_id=ME,
        ).run_once()
        self.since = cutoff - LOOK_BACK
        after = {p.name[:64] for p in self.volume.objects_dir.rglob("*.zst")}
        for sha, mtime in before.items():
            if sha in protected or mtime > cutoff.timestamp():
                assert sha in after, "a copy a record may still reference was removed"
            else:
                assert sha not in after, "a lost duplicate's copy past its grace was kept"
        assert report.removed == len(before) - len(after)

    @invariant()
    def the_journal_forgets_only_lost_duplicates(self) -> None:
        live = {identity(r) for r in self.journal.read_all()}
        assert live == set(self.mine) - self.retired


def test_gc_removes_lost_duplicates_and_nothing_a_record_may_still_reference() -> None:
    run_state_machine_as_test(
        Duplicates,
        settings=settings(
            max_examples=150,
            stateful_step_count=30,
            derandomize=True,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
