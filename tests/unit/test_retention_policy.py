"""The retention policy as a pure function of a key's versions and the time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from agent.lifecycle.retention import Entry, RetentionPolicy

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def day(n: float) -> datetime:
    return T0 + timedelta(days=n)


def versions(*days: float) -> list[Entry]:
    return [Entry(f"v{i + 1}", day(d), False) for i, d in enumerate(days)]


def test_no_rule_keeps_everything():
    entries = versions(0, 1, 2)
    assert RetentionPolicy().kept(entries, "v3", day(1000)) == {"v1", "v2", "v3"}


def test_keep_last_versions_counts_the_current_one():
    entries = versions(0, 1, 2, 3, 4)
    policy = RetentionPolicy(keep_last_versions=2)
    assert policy.kept(entries, "v5", day(100)) == {"v4", "v5"}


def test_keep_younger_than_counts_from_when_a_version_was_replaced():
    # v1 was created long ago but replaced only 2 days ago: still kept
    entries = versions(0, 98, 99.5)
    policy = RetentionPolicy(keep_younger_than=timedelta(days=3))
    assert policy.kept(entries, "v3", day(100)) == {"v1", "v2", "v3"}
    assert policy.kept(entries, "v3", day(101.5)) == {"v2", "v3"}


def test_any_rule_keeps_a_version():
    entries = versions(0, 2, 4, 8, 9)
    policy = RetentionPolicy(keep_last_versions=2, keep_younger_than=timedelta(days=3))
    assert policy.kept(entries, "v5", day(10)) == {"v3", "v4", "v5"}


def test_the_current_version_is_never_expired_even_when_old():
    entries = versions(0)
    policy = RetentionPolicy(keep_younger_than=timedelta(days=1))
    assert policy.kept(entries, "v1", day(500)) == {"v1"}


def test_deleted_key_keeps_its_last_version_until_keep_deleted_expires():
    entries = [*versions(0, 1), Entry("del", day(5), True)]
    policy = RetentionPolicy(keep_last_versions=1, keep_deleted=timedelta(days=7))
    assert policy.kept(entries, "del", day(11.9)) == {"v2", "del"}
    assert policy.kept(entries, "del", day(12)) == set()


def test_deleted_key_without_keep_deleted_keeps_its_last_version_forever():
    entries = [*versions(0, 1), Entry("del", day(5), True)]
    policy = RetentionPolicy(keep_last_versions=1)
    assert policy.kept(entries, "del", day(5000)) == {"v2", "del"}


def test_an_old_tombstone_goes_with_the_versions_before_it():
    entries = [
        Entry("v1", day(0), False),
        Entry("del", day(1), True),
        Entry("v2", day(2), False),
        Entry("v3", day(3), False),
    ]
    assert RetentionPolicy(keep_last_versions=2).kept(entries, "v3", day(9)) == {"v2", "v3"}
    assert RetentionPolicy(keep_last_versions=3).kept(entries, "v3", day(9)) == {
        "v1",
        "del",
        "v2",
        "v3",
    }


def test_latest_pointer_wins_over_creation_order():
    # LATEST names v1 (e.g. sequencer order disagrees with times): it is protected
    entries = versions(0, 1)
    assert RetentionPolicy(keep_last_versions=1).kept(entries, "v1", day(9)) >= {"v1"}
