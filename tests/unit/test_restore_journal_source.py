"""`JournalSource.latest`: the offline restore's LATEST of each key, as the ledger's.

A key with a single record takes a short way (no `history.latest_entry`: it was most of the
plan's time for 10,000 small files, issue 19); these tests hold it to what
`history.latest_entry` says, for a single record of every kind and for longer histories.
"""

from __future__ import annotations

import dataclasses

from hypothesis import given
from hypothesis import strategies as st

from agent import history
from agent.records import Rejections, VersionRecord
from agent.restore.source import JournalSource

BASE = VersionRecord(
    bucket="b", key="k", version_token="v:1", order_key="s1", event_name="ObjectCreated:Put",
    event_time="2026-11-01T09:00:00+00:00", backup_time="2026-11-01T09:00:01+00:00",
    volume_id="vol-test", sha256="ab" * 32, size=4,
)  # fmt: skip


class Replayed:
    """A journal that replays the given records."""

    def __init__(self, records: list[VersionRecord]) -> None:
        self.records = records
        self.rejections = Rejections()

    def read_all(self):
        return iter(self.records)


@st.composite
def records(draw, key: str) -> VersionRecord:
    """A version, a delete marker, an unversioned delete or a permanent delete (removal)."""
    version_id = draw(st.sampled_from([None, "null", "A", "B"]))
    kind = draw(st.sampled_from(["version", "marker", "delete"]))
    order = draw(st.integers(1, 9))
    deleted = kind != "version"
    return dataclasses.replace(
        BASE,
        key=key,
        version_id=version_id,
        version_token=f"{kind}:{version_id}:{order}",
        order_key=f"s{order}",
        event_name="ObjectCreated:Put" if not deleted else "ObjectRemoved:Delete",
        deleted=deleted,
        delete_marker=kind == "marker",
        sha256=None if deleted else BASE.sha256,
        size=None if deleted else BASE.size,
    )


@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c", "d"]), st.data()), max_size=12))
def test_latest_is_history_latest_entry_of_every_key(keys_and_data) -> None:
    journal = [data.draw(records(key)) for key, data in keys_and_data]
    source = JournalSource(Replayed(journal))  # type: ignore[arg-type]

    expected = []
    for key in sorted({record.key for record in journal}):
        first_of_each_token: dict[str, VersionRecord] = {}
        for record in journal:
            if record.key == key:
                first_of_each_token.setdefault(record.version_token, record)
        entry = history.latest_entry(list(first_of_each_token.values()))
        if entry is not None:
            expected.append(entry)
    assert list(source.latest("b")) == expected


def test_a_key_with_a_single_removal_is_listed_with_it() -> None:
    removal = dataclasses.replace(
        BASE, version_id="A", version_token="rm:A", deleted=True, event_name="ObjectRemoved:Delete"
    )
    assert removal.removes_one_version

    assert list(JournalSource(Replayed([removal])).latest("b")) == [removal]  # type: ignore[arg-type]
    assert history.latest_entry([removal]) == removal
