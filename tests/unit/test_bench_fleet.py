"""The fleet benchmark's copy count (bench/fleet.py): it counts the copy files on the
volumes, so a version copied to two volumes, or to none, shows."""

from __future__ import annotations

import hashlib

import pytest

from agent.records import VersionRecord
from agent.storage.journal import Journal
from agent.storage.volume import Volume
from bench.fleet import count_copies

SHA = {key: hashlib.sha256(key.encode()).hexdigest() for key in ("a", "b")}


@pytest.fixture
def volumes(tmp_path):
    roots = []
    for name in ("vol-1", "vol-2"):
        root = tmp_path / name
        root.mkdir()
        Volume(root).initialise(name)
        roots.append(root)
    return roots


def put_copy(root, key):
    path = Volume(root).copy_path(SHA[key])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"copy")


def test_each_version_on_one_volume_is_counted_once(volumes):
    put_copy(volumes[0], "a")
    put_copy(volumes[1], "b")
    copies = count_copies(SHA, volumes, {"a": ["vol-1"], "b": ["vol-2"]})
    assert (copies.versions, copies.copies, copies.twice, copies.missing) == (2, 2, 0, 0)
    assert (copies.unrecorded, copies.misplaced, copies.journal_twice) == (0, 0, 0)


def test_a_version_on_two_volumes_is_copied_twice_even_when_the_ledger_names_one(volumes):
    for root in volumes:
        put_copy(root, "a")
    put_copy(volumes[1], "b")
    copies = count_copies(SHA, volumes, {"a": ["vol-1"], "b": ["vol-2"]})
    assert (copies.copies, copies.twice, copies.missing) == (3, 1, 0)


def test_missing_unrecorded_and_misplaced_versions_show(volumes):
    put_copy(volumes[0], "a")
    copies = count_copies(SHA, volumes, {"a": ["vol-2"]})
    assert (copies.missing, copies.unrecorded, copies.misplaced) == (1, 1, 1)


def test_with_two_replica_groups_two_volumes_per_version_is_the_target(volumes):
    for root in volumes:
        put_copy(root, "a")
    put_copy(volumes[0], "b")
    copies = count_copies(SHA, volumes, {"a": ["vol-1"], "b": ["vol-1"]}, groups=2)
    assert (copies.twice, copies.missing) == (0, 1)


def journal(root, key, volume_id):
    record = VersionRecord(
        bucket="bench-fleet",
        key=key,
        version_token="etag:" + SHA[key][:32],
        order_key="0",
        event_name="ObjectCreated:Put",
        event_time="2026-12-01T00:00:00.000Z",
        backup_time="2026-12-01T00:00:01+00:00",
        volume_id=volume_id,
        sha256=SHA[key],
    )
    Journal(Volume(root).journal_dir).append(record)


def test_the_journals_cross_check_counts_a_version_journalled_on_two_volumes(volumes):
    for root, name in zip(volumes, ("vol-1", "vol-2"), strict=True):
        put_copy(root, "a")
        journal(root, "a", name)
    put_copy(volumes[0], "b")
    journal(volumes[0], "b", "vol-1")
    copies = count_copies(SHA, volumes, {"a": ["vol-1"], "b": ["vol-1"]})
    assert (copies.twice, copies.journal_twice) == (1, 1)
