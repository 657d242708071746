"""A ledger write whose answer was lost, while retention expired the version (moto).

The commit stage journals a version again when retention expired it between its journal
line and its ledger write (`journal_again_if_expired`): the journal, which gc reads, must
keep a version whose item names this volume. When the write's first request succeeded but
its answer was lost (a read timeout, a 500) botocore sends it again, the condition of the
retry fails on the item the first one made, and the ledger answers "already recorded": the
check was skipped, the journal forgot the version, gc freed the copy the item names, and a
restore found a record but no copy (the lost-answer review, 2026-12-02).

Retention runs here inside the ledger write, as in tests/unit/test_commit.py: its
``expired`` note after the line, its delete (or, with replica groups, its release) before
the version's PutItem; the item is there at first (a second delivery of a recorded
version), so the TransactWriteItems is cancelled and the record goes through `record`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import types
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from agent.pipeline.backup import BackupService
from agent.pipeline.commit import Committer, Pending
from agent.records import VersionRecord
from agent.storage.journal import Journal
from agent.storage.ledger import Ledger, Written
from tests.support.ledger_table import BUCKET, T0, TABLE, ledger_table, stored_version

WAIT = 30
G1, G2 = "backup-events-1", "backup-events-2"


@pytest.fixture
def dynamodb() -> Iterator[Any]:
    with ledger_table() as client:
        yield client


class LostAnswers:
    """The client, except that the first PutItem of the version item `sk` (and, once armed,
    the first UpdateItem of it) runs `before` first, then is sent twice, the caller seeing
    the second answer: the first response lost, botocore sending the request again."""

    def __init__(self, client: Any, sk: str, before: Callable[[], None]) -> None:
        self._client = client
        self._sk = sk
        self._before: Callable[[], None] | None = before
        self._updates = 1

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def put_item(self, **kwargs: Any) -> Any:
        if kwargs["Item"]["sk"]["S"] != self._sk or self._before is None:
            return self._client.put_item(**kwargs)
        before, self._before = self._before, None
        before()
        self._client.put_item(**kwargs)
        return self._client.put_item(**kwargs)

    def update_item(self, **kwargs: Any) -> Any:
        if kwargs["Key"]["sk"]["S"] != self._sk or not self._updates:
            return self._client.update_item(**kwargs)
        self._updates -= 1
        self._client.update_item(**kwargs)
        return self._client.update_item(**kwargs)


def identities(journal: Journal) -> set[tuple[str, str, str]]:
    return {(r.bucket, r.key, r.version_token) for r in journal.read_all()}


def identity(record: VersionRecord) -> tuple[str, str, str]:
    return (record.bucket, record.key, record.version_token)


def again(record: VersionRecord) -> VersionRecord:
    """A second delivery's record of the same version (backed up a minute later)."""
    later = (T0 + timedelta(minutes=1)).isoformat()
    return dataclasses.replace(record, backup_time=later)


@dataclasses.dataclass
class World:
    journal: Journal
    ledger: Ledger  # the member's, whose writes lose their first answer
    record: VersionRecord  # the second delivery's record
    reader: Ledger


def world(dynamodb: Any, tmp_path: Path, group: str | None) -> World:
    """v1 recorded and journalled on vol-a (with replica groups, held by group 1's vol-z
    and this group's vol-a); its second delivery's write loses its answer, with retention
    expiring v1 on vol-a meanwhile."""
    journal = Journal(tmp_path)
    first = stored_version("reports/q1.txt", "v1", "0A", volume_id="vol-a")
    if group is not None:
        Ledger(dynamodb, TABLE, group=G1, volume_id="vol-z").record(
            dataclasses.replace(first, volume_id="vol-z")
        )
    plain = Ledger(dynamodb, TABLE, group=group, volume_id="vol-a")
    plain.record(first)
    journal.append_many([first])

    def retention() -> None:  # expires v1 on vol-a: note first, then the item
        seen = plain.get_version(BUCKET, first.key, first.version_token)
        assert seen is not None and "vol-a" in seen.holder_volumes()
        journal.append_note("expired", seen.to_dict())
        if group is None:
            plain.delete_version(seen)
        else:
            assert not plain.release(seen, "vol-a")  # group 1 holds it still

    lost = LostAnswers(dynamodb, "V#" + first.version_token, retention)
    ledger = Ledger(lost, TABLE, group=group, volume_id="vol-a")
    return World(journal, ledger, again(first), Ledger(dynamodb, TABLE))


def assert_agree(w: World) -> None:
    """The ledger names vol-a for v1, and vol-a's journal keeps v1 (gc keeps the copy)."""
    item = w.reader.get_version(BUCKET, w.record.key, w.record.version_token)
    assert item is not None and "vol-a" in item.holder_volumes()
    assert identity(w.record) in identities(w.journal)


@pytest.mark.parametrize("group", [None, G2], ids=["one-holder", "replica-group"])
def test_the_ledger_says_the_item_holds_this_volume_after_a_lost_answer(dynamodb, tmp_path, group):
    """The retry is refused by the item the first request made: not fresh, but the answer
    (ALL_OLD) names this volume for this group, with this copy."""
    w = world(dynamodb, tmp_path, group)
    w.journal.append_many([w.record])

    assert w.ledger.write(w.record) is Written.HELD


@pytest.mark.parametrize("group", [None, G2], ids=["one-holder", "replica-group"])
def test_a_committed_version_expired_meanwhile_stays_journalled_after_a_lost_answer(
    dynamodb, tmp_path, group, committers
):
    w = world(dynamodb, tmp_path, group)
    committer = Committer(w.journal, w.ledger)
    committers.append(committer)

    pending = committer.submit(Pending(w.record, lambda fresh: fresh, contextlib.ExitStack()))

    assert pending.wait(WAIT) is False  # already recorded, as far as the ledger can tell
    assert_agree(w)


@pytest.mark.parametrize("group", [None, G2], ids=["one-holder", "replica-group"])
def test_a_version_journalled_and_recorded_alone_stays_journalled_after_a_lost_answer(
    dynamodb, tmp_path, group
):
    """The same through `BackupService._journal_and_record` (tombstones, archived versions,
    replaced records, a service without a committer)."""
    w = world(dynamodb, tmp_path, group)
    service = types.SimpleNamespace(journal=w.journal, ledger=w.ledger)

    assert BackupService._journal_and_record(service, w.record) is False  # type: ignore[arg-type]
    assert_agree(w)


@pytest.mark.parametrize("group", [None, G2], ids=["one-holder", "replica-group"])
def test_the_ledger_says_known_for_an_item_of_another_volume_or_another_copy(dynamodb, group):
    """A genuine duplicate is HELD only when its item names this volume with this copy:
    another volume's (another member of the group won) or another copy is KNOWN, so the
    commit stage never journals it again unasked."""
    record = stored_version("reports/q1.txt", "v1", "0A", volume_id="vol-a")
    Ledger(dynamodb, TABLE, group=group, volume_id="vol-y").record(
        dataclasses.replace(record, volume_id="vol-y")
    )
    other = stored_version("reports/q2.txt", "v1", "0A", volume_id="vol-a")
    Ledger(dynamodb, TABLE, group=group, volume_id="vol-a").record(
        dataclasses.replace(other, sha256="cd" * 32)
    )
    ledger = Ledger(dynamodb, TABLE, group=group, volume_id="vol-a")

    assert ledger.write(record) is Written.KNOWN
    assert ledger.write(other) is Written.KNOWN
    assert ledger.write(dataclasses.replace(other, sha256="cd" * 32)) is Written.HELD
