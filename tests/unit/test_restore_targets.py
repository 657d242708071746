"""The directory target refuses every path that would lead out of it (issue 16, item 1).

Each case is tried on `restore` and on `check` (--dry-run): a symlinked directory, a
symlinked or dangling final name, `..` and absolute keys, a target directory swapped after
it was opened, and copies on the volume reached through a symlink.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from agent.records import validated
from agent.restore.copies import CorruptCopy
from agent.restore.restorer import Restorer
from agent.restore.targets import DirectoryTarget, Status
from agent.restore.tree import RestoreRefused, UnsafePath
from agent.restore.verify import verify
from agent.storage.volume import Volume
from tests.support.stored import placed_item, placed_plan, stored_record

DATA = b"restored content\n"


def _nothing(_nbytes: int) -> None:
    pass


def _files(directory: Path) -> list[str]:
    return sorted(
        os.path.relpath(os.path.join(d, name), directory)
        for d, dirs, files in os.walk(directory)
        for name in files + [x for x in dirs if os.path.islink(os.path.join(d, x))]
    )


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    place = tmp_path / "elsewhere"
    place.mkdir()
    return place


@pytest.fixture
def target(tmp_path: Path) -> Path:
    place = tmp_path / "out"
    place.mkdir()
    return place


def test_a_symlinked_directory_is_refused_and_not_followed(volume, target, outside):
    (target / "sub").symlink_to(outside)
    (outside / "file.txt").write_bytes(DATA)  # what a dry run must not read
    item = placed_item(volume, "sub/deep/file.txt", DATA)
    restore = DirectoryTarget(volume, target)

    with pytest.raises(UnsafePath, match="sub is a symlink"):
        restore.restore(item, _nothing)
    note = restore.check(item)

    assert note is not None and note.startswith("would fail:") and "is a symlink" in note
    assert _files(outside) == ["file.txt"]


def test_a_dangling_symlinked_directory_is_refused(volume, target, tmp_path):
    (target / "sub").symlink_to(tmp_path / "nowhere")
    item = placed_item(volume, "sub/file.txt", DATA)

    with pytest.raises(UnsafePath, match="is a symlink"):
        DirectoryTarget(volume, target).restore(item, _nothing)
    assert not (tmp_path / "nowhere").exists()


def test_a_file_where_a_directory_is_needed_is_refused(volume, target):
    (target / "sub").write_bytes(b"a file")
    item = placed_item(volume, "sub/file.txt", DATA)

    with pytest.raises(RestoreRefused, match="is a file, where a directory is needed"):
        DirectoryTarget(volume, target).restore(item, _nothing)


def test_a_symlink_at_the_final_name_is_never_followed(volume, target, outside):
    secret = outside / "secret"
    secret.write_bytes(DATA)  # the same bytes: "unchanged" would say so to an attacker
    (target / "file.txt").symlink_to(secret)
    item = placed_item(volume, "file.txt", DATA)

    refused = DirectoryTarget(volume, target)
    with pytest.raises(RestoreRefused, match=r"is a symlink .*--overwrite"):
        refused.restore(item, _nothing)
    assert refused.check(item) == "is a symlink (never followed); needs --overwrite"
    assert (target / "file.txt").is_symlink()

    replacing = DirectoryTarget(volume, target, overwrite=True)
    assert replacing.check(item) == "is a symlink (never followed); would be replaced"
    assert replacing.restore(item, _nothing) is Status.RESTORED
    assert not (target / "file.txt").is_symlink()  # the link itself was replaced
    assert (target / "file.txt").read_bytes() == DATA
    assert secret.read_bytes() == DATA and _files(outside) == ["secret"]


def test_a_dangling_symlink_at_the_final_name_creates_nothing_where_it_points(
    volume, target, outside
):
    (target / "file.txt").symlink_to(outside / "planted")
    item = placed_item(volume, "file.txt", DATA)

    with pytest.raises(RestoreRefused, match="is a symlink"):
        DirectoryTarget(volume, target).restore(item, _nothing)
    assert DirectoryTarget(volume, target, overwrite=True).restore(item, _nothing) is (
        Status.RESTORED
    )

    assert _files(outside) == []
    assert (target / "file.txt").read_bytes() == DATA


@pytest.mark.parametrize(
    ("key", "lands_at"),
    [
        ("../../escape.txt", "%2E%2E/%2E%2E/escape.txt"),
        ("a/../../b.txt", "a/%2E%2E/%2E%2E/b.txt"),
        ("..", "%2E%2E"),
        ("/etc/cron.d/evil", "%/etc/cron.d/evil"),
        ("//abs", "%/%/abs"),
    ],
)
def test_dot_dot_and_absolute_keys_stay_inside(volume, tmp_path, key, lands_at):
    target = tmp_path / "deep" / "out"
    item = placed_item(volume, key, DATA)

    assert DirectoryTarget(volume, target).restore(item, _nothing) is Status.RESTORED

    assert (target / lands_at).read_bytes() == DATA
    written = [p for p in tmp_path.rglob("*") if p.is_file() and "backups" not in p.parts]
    assert written == [target / lands_at]


SURROGATE_KEY = "docs/lone \ud800 surrogate"  # a journal line's JSON "\ud800"


@pytest.mark.parametrize("exists", [False, True], ids=["made-by-the-run", "already-there"])
def test_a_key_with_a_lone_surrogate_is_restored_under_an_escaped_name(volume, tmp_path, exists):
    """A record's key may hold a lone surrogate (validated() takes it: the bytes are a
    verified copy like any other), which no file name can: os.fsencode raised
    UnicodeEncodeError out of the restore, which stopped at it, with the file before it named
    and its own temp file left behind (found by a review). It is escaped (paths.py)."""
    record = dataclasses.asdict(stored_record(volume, SURROGATE_KEY, DATA))
    assert not isinstance(validated(record), str)
    out = tmp_path / "out"
    if exists:
        (out / "docs").mkdir(parents=True)
    plan = placed_plan(volume, ["docs/a.txt", SURROGATE_KEY, "docs/b.txt"], DATA)

    summary = Restorer(DirectoryTarget(volume, out), workers=1).run(plan)

    assert [r.status for r in summary.results] == [Status.RESTORED] * 3
    escaped = "docs/lone %ED%A0%80 surrogate"
    assert [r.destination for r in summary.results][1] == str(out / escaped)
    assert summary.results[1].to_dict()["renamed"]
    assert _files(out) == ["docs/a.txt", "docs/b.txt", escaped]  # no temp file
    assert (out / escaped).read_bytes() == DATA


@pytest.mark.parametrize("workers", [1, 3])
@pytest.mark.parametrize("exists", [False, True], ids=["made-by-the-run", "already-there"])
def test_a_name_the_system_refuses_with_a_value_error_fails_alone(
    volume, tmp_path, exists, workers
):
    """A name os.* refuses with ValueError (a NUL byte, which validated() keeps out of the
    records; or a key part the filesystem encoding cannot hold) fails its file alone, named,
    as an OSError would: it stopped the restore (in the commit: the rest of the batch
    unnamed, its temp files left; while staging: the batch cancelled). renameat2, called
    through ctypes, would have cut the name at the NUL: it is refused before."""
    out = tmp_path / "out"
    if exists:
        (out / "docs").mkdir(parents=True)
    keys = ["docs/a.txt", "docs/nul \x00 byte", "docs/b.txt"]

    summary = Restorer(DirectoryTarget(volume, out), workers=workers).run(
        placed_plan(volume, keys, DATA)
    )

    assert [r.status for r in summary.results] == [
        Status.RESTORED,
        Status.FAILED,
        Status.RESTORED,
    ]
    assert "cannot be a file name here" in (summary.results[1].error or "")
    assert _files(out) == ["docs/a.txt", "docs/b.txt"]  # nothing at "nul ", no temp file


def test_a_name_the_system_refuses_is_a_dry_run_note(volume, target):
    item = placed_item(volume, "docs/nul \x00 byte", DATA)
    (target / "docs").mkdir()

    assert "cannot be a file name here" in (DirectoryTarget(volume, target).check(item) or "")


def test_a_fifo_at_the_final_name_does_not_block_a_dry_run(volume, target):
    os.mkfifo(target / "file.txt")
    item = placed_item(volume, "file.txt", DATA)

    assert DirectoryTarget(volume, target).check(item) == "exists; needs --overwrite"


def test_the_target_directory_swapped_for_a_symlink_before_the_first_write_is_refused(
    volume, target, outside
):
    restore = DirectoryTarget(volume, target)  # resolved now, opened on the first write
    target.rename(target.with_name("moved"))
    target.symlink_to(outside)

    with pytest.raises(UnsafePath, match="is a symlink"):
        restore.restore(placed_item(volume, "file.txt", DATA), _nothing)
    assert _files(outside) == []


@pytest.mark.parametrize("exists", [True, False], ids=["target there", "target missing"])
def test_an_ancestor_of_the_target_swapped_for_a_symlink_before_the_first_write_is_refused(
    volume, tmp_path, outside, exists
):
    """--to shared/restore/today where another user may write shared/: once the path was
    resolved they put a symlink at shared/restore. The walk to the target refuses it, on
    the dry run too: nothing is made or written where it points (opening the path followed
    it, and `mkdir -p` made the missing target there)."""
    shared = tmp_path / "shared"
    to = shared / "restore" / "today"
    (to if exists else shared).mkdir(parents=True)
    item = placed_item(volume, "file.txt", DATA)
    restore = DirectoryTarget(volume, to)  # resolved now, opened on the first write
    if exists:
        (shared / "restore").rename(shared / "moved")
        (outside / "today").mkdir()
    (shared / "restore").symlink_to(outside)

    assert (restore.check(item) or "").startswith("would fail: ")
    with pytest.raises(UnsafePath, match="restore is a symlink"):
        restore.restore(item, _nothing)

    assert _files(outside) == []
    assert os.listdir(outside) == (["today"] if exists else [])


def test_once_opened_the_target_is_held_even_if_its_name_is_swapped(volume, target, outside):
    """The descriptor held is the directory the restore started in: moving it away and
    putting a symlink in its place changes nothing about where files go."""
    plan = placed_plan(volume, ["first.txt", "second.txt"], DATA)
    restore = DirectoryTarget(volume, target)
    assert restore.restore(plan.items[0], _nothing) is Status.RESTORED
    moved = target.with_name("moved")
    target.rename(moved)
    target.symlink_to(outside)

    assert restore.restore(plan.items[1], _nothing) is Status.RESTORED

    assert _files(moved) == ["first.txt", "second.txt"]
    assert _files(outside) == []
    restore.close()


def test_the_restore_summary_reports_a_refused_path_and_goes_on(volume, target, outside):
    (target / "sub").symlink_to(outside)
    plan = placed_plan(volume, ["sub/x.txt", "fine.txt"], DATA)

    summary = Restorer(DirectoryTarget(volume, target), workers=2).run(plan)

    statuses = {r.item.key: r.status for r in summary.results}
    assert statuses == {"sub/x.txt": Status.FAILED, "fine.txt": Status.RESTORED}
    assert "is a symlink; refusing to follow it" in (summary.failed[0].error or "")
    assert _files(outside) == []


# -- the volume side: copies are read without following symlinks -----------------------


def _swap_copy_for_symlink(volume: Volume, sha256: str, outside: Path) -> Path:
    """Move the real copy out of the volume and leave a symlink to it in its place."""
    path = volume.copy_path(sha256)
    moved = outside / path.name
    path.rename(moved)
    path.symlink_to(moved)
    return moved


def test_a_copy_that_is_a_symlink_is_not_read(volume, target, outside):
    item = placed_item(volume, "file.txt", DATA)
    sha = item.record.sha256 or ""
    _swap_copy_for_symlink(volume, sha, outside)  # the right bytes, but not on the volume

    with pytest.raises(CorruptCopy, match="symlink"):
        DirectoryTarget(volume, target).restore(item, _nothing)
    report = verify(volume, [item.record], workers=1)

    assert [p.error for p in report.problems] == [
        f"copy {sha} is reached through a symlink or is not a file (not followed)"
    ]
    assert _files(target) == []


def test_a_copy_directory_that_is_a_symlink_is_not_read(volume, outside):
    record = stored_record(volume, "file.txt", DATA)
    sha = record.sha256 or ""
    bucket = volume.copy_path(sha).parent
    bucket.rename(outside / bucket.name)
    bucket.symlink_to(outside / bucket.name)

    report = verify(volume, [record], workers=1)

    assert len(report.problems) == 1 and "not followed" in report.problems[0].error


def test_verify_checks_every_records_size_against_the_copy(volume):
    """Two versions with the same bytes share one copy; one record's size was wrong (a
    tampered journal line) and passed verify, which compared only the first's, while its
    restore would fail (a review, 2026-12-02)."""
    good = stored_record(volume, "a.txt", DATA)
    bad = dataclasses.replace(good, key="b.txt", version_token="v:2", size=len(DATA) + 1)

    report = verify(volume, [good, bad], workers=1)

    assert [(p.record.key, p.error) for p in report.problems] == [
        ("b.txt", f"recorded size {len(DATA) + 1}, but the copy holds {len(DATA)} bytes")
    ]
    assert report.checked == 1 and report.bytes == len(DATA)
