"""A directory restore is durable per batch, not per file (issue 19, restore of small files).

The flushes are counted through the `Barriers` seam, never timed: with syncfs, two per
batch and no fsync; without it, one fsync per file and one per directory touched. A crash
at either barrier leaves complete files under their names, or temp names only, and a
restore an hour later removes those (and nothing else: not a user's file of a like name,
not another user's, not a restore's still running).
"""

from __future__ import annotations

import collections
import errno
import os
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import structlog

from agent.restore import durable, targets, tree
from agent.restore.durable import STALE_AFTER, Barriers, temp_name
from agent.restore.restorer import Restorer
from agent.restore.targets import DirectoryTarget, Status
from agent.restore.tree import RestoreRefused
from tests.support.stored import placed_plan

DATA = b"small restored file\n" * 3
KEYS = ["top.txt", "a/1.txt", "a/2.txt", "a/b/3.txt", "c/4.txt", "c/5.txt", "c/6.txt"]


class Crash(BaseException):
    """The process dies here (nothing after it runs, nothing is cleaned up)."""


class Counting(Barriers):
    def __init__(self, *, use_syncfs: bool, crash_at_sync: int | None = None) -> None:
        super().__init__(use_syncfs=use_syncfs)
        self.syncs = 0
        self.file_fsyncs = 0
        self.directory_fsyncs: collections.Counter[int] = collections.Counter()  # by inode
        self.crash_at_sync = crash_at_sync

    def sync_filesystem(self, fd: int) -> None:
        self.syncs += 1
        if self.syncs == self.crash_at_sync:
            raise Crash
        super().sync_filesystem(fd)

    def fsync(self, fd: int) -> None:
        found = os.fstat(fd)
        if stat.S_ISDIR(found.st_mode):
            self.directory_fsyncs[found.st_ino] += 1
        else:
            self.file_fsyncs += 1
        super().fsync(fd)


def _everything(directory: Path) -> list[str]:
    return sorted(
        os.path.relpath(os.path.join(d, name), directory)
        for d, _dirs, files in os.walk(directory)
        for name in files
    )


def _temps(directory: Path) -> list[str]:
    return [name for name in _everything(directory) if ".restore-" in name]


@pytest.fixture
def target(tmp_path: Path) -> Path:
    place = tmp_path / "out"
    place.mkdir()
    return place


needs_syncfs = pytest.mark.skipif(not Barriers().whole_filesystem, reason="syncfs(2) is Linux-only")


@needs_syncfs
def test_with_syncfs_each_batch_costs_two_flushes_and_no_fsync(volume, target):
    barriers = Counting(use_syncfs=True)
    plan = placed_plan(volume, KEYS, DATA)

    summary = Restorer(
        DirectoryTarget(volume, target, barriers=barriers), workers=3, batch_files=3
    ).run(plan)

    assert [r.status for r in summary.results] == [Status.RESTORED] * len(KEYS)
    assert barriers.syncs == 2 * 3  # 7 files in batches of 3: bytes, then names, per batch
    assert barriers.file_fsyncs == 0
    assert not barriers.directory_fsyncs
    assert _everything(target) == sorted(KEYS)
    assert all((target / key).read_bytes() == DATA for key in KEYS)


def test_without_syncfs_each_directory_is_fsynced_once_per_batch(volume, target):
    barriers = Counting(use_syncfs=False)
    plan = placed_plan(volume, KEYS, DATA)

    summary = Restorer(DirectoryTarget(volume, target, barriers=barriers), workers=3).run(plan)

    assert summary.ok and summary.count(Status.RESTORED) == len(KEYS)
    assert barriers.file_fsyncs == len(KEYS)  # each file's bytes before its name
    directories = {(target / d).stat().st_ino for d in ("", "a", "a/b", "c")}
    assert set(barriers.directory_fsyncs) == directories
    assert set(barriers.directory_fsyncs.values()) == {1}
    assert _everything(target) == sorted(KEYS)


def test_a_created_target_directory_is_made_durable_in_its_parent(volume, tmp_path):
    barriers = Counting(use_syncfs=False)
    fresh = tmp_path / "new" / "out"

    Restorer(DirectoryTarget(volume, fresh, barriers=barriers)).run(
        placed_plan(volume, ["x/only.txt"], DATA)
    )

    inodes = {p.stat().st_ino for p in (fresh.parent, fresh, fresh / "x")}
    assert set(barriers.directory_fsyncs) == inodes
    assert (fresh / "x" / "only.txt").read_bytes() == DATA


def _an_hour_on() -> float:
    """A clock `STALE_AFTER` ahead: every file now on disk is as old as a crash's leftovers."""
    return time.time() + STALE_AFTER + 1


@needs_syncfs
def test_a_crash_before_the_names_leaves_only_temp_names_which_a_rerun_an_hour_on_removes(
    volume, target
):
    plan = placed_plan(volume, KEYS, DATA)
    crashing = Counting(use_syncfs=True, crash_at_sync=1)  # right after the bytes were written

    with pytest.raises(Crash):
        Restorer(DirectoryTarget(volume, target, barriers=crashing), workers=3).run(plan)

    left = _temps(target)
    assert len(left) == len(KEYS)
    assert [name for name in _everything(target) if name not in left] == []

    summary = Restorer(DirectoryTarget(volume, target), workers=3).run(plan)

    assert summary.ok and summary.count(Status.RESTORED) == len(KEYS)
    assert _temps(target) == left  # too young to tell from a live restore's: in no one's way

    summary = Restorer(DirectoryTarget(volume, target, clock=_an_hour_on), workers=3).run(plan)

    assert summary.ok and summary.count(Status.UNCHANGED) == len(KEYS)
    assert _everything(target) == sorted(KEYS)  # the crashed run's temp files are gone


@pytest.mark.parametrize(
    "name",
    [
        temp_name("0123456789ab", 7),
        temp_name("0123456789ab", (1 << 40) + 3),  # a worker process's (workers.py)
        ".restore-" + "5f0e" * 8 + ".part",  # the form before batches (6f29a41): 32 hex
    ],
)
def test_an_hour_old_temp_file_of_this_user_is_removed(volume, target, name):
    (target / "d").mkdir()
    (target / "d" / name).write_bytes(b"half a file")

    summary = Restorer(DirectoryTarget(volume, target, clock=_an_hour_on), workers=1).run(
        placed_plan(volume, ["d/report.txt"], DATA)
    )

    assert summary.ok and _everything(target) == ["d/report.txt"]


@pytest.mark.parametrize(
    "name",
    [
        ".restore-notes.part",
        ".restore-.part",
        ".restore-0123456789AB-1.part",  # not the lowercase hex of a run id
        ".restore-0123456789ab-01.part",  # no serial is written with a leading zero
        ".restore-0123456789ab-1-copy.part",
        ".restore-0123456789ab.part",
    ],
)
def test_a_file_named_like_a_temp_file_but_not_one_is_never_removed(volume, target, name):
    """A user's own `.restore-notes.part`: the restore removes only names of exactly its
    temp names' form, however old (it removed any `.restore-*.part` not its own: found by
    a review)."""
    (target / "docs").mkdir()
    (target / "docs" / name).write_bytes(b"precious user data\n")

    summary = Restorer(DirectoryTarget(volume, target, clock=_an_hour_on), workers=1).run(
        placed_plan(volume, ["docs/report.txt"], DATA)
    )

    assert summary.ok
    assert (target / "docs" / name).read_bytes() == b"precious user data\n"


def test_a_file_restored_from_a_key_named_like_a_temp_file_survives_later_restores(volume, target):
    """The key `d/.restore-0123456789ab-1.part` was restored under exactly that name, which a
    restore into d/ an hour later removed as a crash's temp file (found by a review). Its
    dot is escaped (paths.py), and the key is reported renamed."""
    key = "d/.restore-0123456789ab-1.part"
    first = Restorer(DirectoryTarget(volume, target), workers=1).run(
        placed_plan(volume, [key], DATA)
    )
    assert first.count(Status.RESTORED) == 1
    [restored] = first.results
    assert restored.destination == str(target / "d" / "%2Erestore-0123456789ab-1.part")
    assert restored.to_dict()["renamed"]

    later = Restorer(DirectoryTarget(volume, target, clock=_an_hour_on), workers=1).run(
        placed_plan(volume, ["d/other"], DATA)
    )

    assert later.ok
    assert _everything(target) == ["d/%2Erestore-0123456789ab-1.part", "d/other"]


def test_another_users_temp_file_is_never_removed(volume, target, monkeypatch):
    """A restore removes only the restoring user's temp files: root's restore leaves alone
    a file another user named like one (here: the restoring user is another uid)."""
    (target / "d").mkdir()
    theirs = target / "d" / temp_name("0123456789ab", 1)
    theirs.write_bytes(b"their bytes")
    monkeypatch.setattr(targets.os, "geteuid", lambda: theirs.stat().st_uid + 1)

    summary = Restorer(DirectoryTarget(volume, target, clock=_an_hour_on), workers=1).run(
        placed_plan(volume, ["d/report.txt"], DATA)
    )

    assert summary.ok and theirs.read_bytes() == b"their bytes"


def test_a_temp_file_of_a_restore_still_running_in_the_same_directory_is_left_alone(volume, target):
    """Two restores into one directory at once: the second one's first file in d/ swept
    away the first one's temp file, whose commit then failed (found by a review). A temp
    file changed within the hour is kept."""
    [one] = placed_plan(volume, ["d/one"], DATA).items
    [two] = placed_plan(volume, ["d/two"], DATA).items
    first, second = DirectoryTarget(volume, target), DirectoryTarget(volume, target)
    staged = first.stage(one, lambda _n: None)  # the first restore, mid-batch
    assert not isinstance(staged, Status)

    assert second.restore(two, lambda _n: None) is Status.RESTORED

    assert first.commit([staged]) == [None]
    assert _everything(target) == ["d/one", "d/two"]


@needs_syncfs
def test_a_crash_after_the_names_leaves_complete_files(volume, target):
    plan = placed_plan(volume, KEYS, DATA)
    crashing = Counting(use_syncfs=True, crash_at_sync=2)  # bytes durable, names not yet

    with pytest.raises(Crash):
        Restorer(DirectoryTarget(volume, target, barriers=crashing), workers=3).run(plan)

    assert _everything(target) == sorted(KEYS)
    assert all((target / key).read_bytes() == DATA for key in KEYS)


class FailingSync(Barriers):
    def sync_filesystem(self, fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")


@needs_syncfs
def test_a_failed_flush_fails_every_file_of_the_batch_and_names_none(volume, target):
    plan = placed_plan(volume, KEYS[:3], DATA)

    summary = Restorer(DirectoryTarget(volume, target, barriers=FailingSync())).run(plan)

    assert [r.status for r in summary.results] == [Status.FAILED] * 3
    assert all("Input/output error" in (r.error or "") for r in summary.results)
    assert _everything(target) == []  # neither names nor temp files


def test_a_temp_name_of_the_running_restore_is_never_removed(volume, target):
    """Workers stage into one directory at once: cleaning it up spares this run's files."""
    keys = [f"d/{n}.txt" for n in range(12)]

    summary = Restorer(DirectoryTarget(volume, target), workers=4, batch_files=5).run(
        placed_plan(volume, keys, DATA)
    )

    assert summary.ok and summary.count(Status.RESTORED) == len(keys)
    assert _everything(target) == sorted(keys)


def test_a_temp_file_replaced_before_its_commit_is_not_named(volume, target):
    [item] = placed_plan(volume, ["d/file.txt"], DATA).items
    restore = DirectoryTarget(volume, target)
    staged = restore.stage(item, lambda _n: None)
    assert not isinstance(staged, Status)
    other = target / "d" / "other"
    other.write_bytes(b"someone else's bytes")
    other.replace(target / "d" / staged.temp)  # renamed over it, as a writer of d/ could

    [error] = restore.commit([staged])

    assert isinstance(error, RestoreRefused)
    assert "temp file was moved or replaced" in str(error)
    assert not (target / "d" / "file.txt").exists()


def _swapped_at_naming(target: Path, staged, monkeypatch, *, overwrite: bool) -> None:
    """Another user's file renamed over the temp name just after the restore checked it and
    just before the rename or link names it: the window a writer of the directory has."""

    def swap() -> None:
        other = target / "d" / "other"
        other.write_bytes(b"someone else's bytes")
        other.replace(target / "d" / staged.temp)

    if overwrite:
        real_rename = os.rename

        def rename(src, dst, **kwargs):
            if src == staged.temp:
                swap()
            return real_rename(src, dst, **kwargs)

        monkeypatch.setattr(targets.os, "rename", rename)
    else:
        real_noreplace = targets.rename_noreplace

        def noreplace(temp, name, parent):
            swap()
            return real_noreplace(temp, name, parent)

        monkeypatch.setattr(targets, "rename_noreplace", noreplace)


@pytest.mark.parametrize("overwrite", [False, True], ids=["link", "--overwrite"])
def test_a_temp_file_swapped_while_it_is_named_in_a_shared_directory_is_reported(
    volume, target, monkeypatch, overwrite
):
    """d/ is writable by everyone (0777, not sticky): a user can swap the temp file between
    the check and the rename. The name is looked at again: the file is not counted restored,
    and the error says what is there is not the restored bytes."""
    [item] = placed_plan(volume, ["d/file.txt"], DATA).items
    (target / "d").mkdir()
    (target / "d").chmod(0o777)
    restore = DirectoryTarget(volume, target, overwrite=overwrite)
    staged = restore.stage(item, lambda _n: None)
    assert not isinstance(staged, Status)
    _swapped_at_naming(target, staged, monkeypatch, overwrite=overwrite)

    [error] = restore.commit([staged])

    assert isinstance(error, RestoreRefused)
    assert "not the restored bytes" in str(error)
    assert (target / "d" / "file.txt").read_bytes() == b"someone else's bytes"


@pytest.mark.parametrize("mode", [0o755, 0o1777], ids=["own-0755", "sticky-1777"])
def test_no_second_look_where_no_other_user_can_swap_the_temp_file(
    volume, target, monkeypatch, mode
):
    """Where only the restoring user may rename its files (its own 0755 directory; a sticky
    directory such as /tmp), naming is not looked at again: no extra lookup per file."""
    [item] = placed_plan(volume, ["d/file.txt"], DATA).items
    (target / "d").mkdir()
    (target / "d").chmod(mode)
    restore = DirectoryTarget(volume, target)
    staged = restore.stage(item, lambda _n: None)
    assert not isinstance(staged, Status)
    looked: list[str] = []
    real_entry = targets.entry

    def counting(directory, name):
        looked.append(name)
        return real_entry(directory, name)

    monkeypatch.setattr(targets, "entry", counting)

    assert restore.commit([staged]) == [None]
    assert "file.txt" not in looked
    assert (target / "d" / "file.txt").read_bytes() == DATA


def test_a_directory_of_another_user_counts_as_shared(tmp_path):
    from agent.restore.tree import others_may_write

    def shared(mode: int, uid: int | None = None) -> bool:
        path = tmp_path / f"{mode:o}-{uid}"
        path.mkdir()
        path.chmod(mode)
        if uid is not None:
            os.chown(path, uid, -1)
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            return others_may_write(fd)
        finally:
            os.close(fd)

    assert not shared(0o755) and not shared(0o700) and not shared(0o1777)
    assert shared(0o775) and shared(0o777) and shared(0o757)
    if os.geteuid() == 0:  # only root can give a directory away
        assert shared(0o755, uid=4242) and shared(0o1777, uid=4242)


def test_a_directory_is_shared_when_the_restoring_user_is_not_its_owner(tmp_path, monkeypatch):
    """The owner may rename any entry: to a restore running as another user (here the
    effective uid made to differ, so the case runs without root) its own 0755 and sticky
    directories are shared."""
    from agent.restore import tree

    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.chmod(fd, 0o755)
        assert not tree.others_may_write(fd)
        monkeypatch.setattr(tree.os, "geteuid", lambda: os.fstat(fd).st_uid + 1)
        assert tree.others_may_write(fd)
        os.chmod(fd, 0o1777)
        assert tree.others_may_write(fd)
    finally:
        os.close(fd)


@pytest.mark.parametrize("renameat2", [True, False], ids=["renameat2", "link-and-unlink"])
def test_a_name_that_appears_before_the_commit_is_never_replaced(
    volume, target, monkeypatch, renameat2
):
    if not renameat2:
        monkeypatch.setattr(durable, "_RENAMEAT2", None)  # an old kernel or glibc
    elif durable._RENAMEAT2 is None:
        pytest.skip("renameat2(2) is not available here")
    [item] = placed_plan(volume, ["d/file.txt"], DATA).items
    restore = DirectoryTarget(volume, target)
    staged = restore.stage(item, lambda _n: None)
    assert not isinstance(staged, Status)
    (target / "d" / "file.txt").write_bytes(b"written meanwhile")

    [error] = restore.commit([staged])

    assert isinstance(error, RestoreRefused) and "appeared meanwhile" in str(error)
    assert (target / "d" / "file.txt").read_bytes() == b"written meanwhile"
    assert _temps(target) == []


def test_naming_a_file_is_one_rename_not_a_link_and_an_unlink(volume, target, monkeypatch):
    """Each directory update costs a filesystem journal entry: under load a create took
    4 ms and an unlink 1 ms here (strace -T, docs/benchmarks.md). link + unlink were two."""
    if durable._RENAMEAT2 is None:
        pytest.skip("renameat2(2) is not available here")
    plan = placed_plan(volume, KEYS, DATA)
    calls: collections.Counter[str] = collections.Counter()

    def counting(name: str) -> object:
        real = getattr(os, name)

        def counted(first, *args, **kwargs):
            if name == "fchmod" and stat.S_ISREG(os.fstat(first).st_mode):
                calls["fchmod of a file"] += 1
            elif isinstance(first, str) and first.startswith(".restore-"):
                calls[f"{name} of a temp name"] += 1
            return real(first, *args, **kwargs)

        return counted

    for name in ("link", "unlink", "fchmod"):
        monkeypatch.setattr(targets.os, name, counting(name))

    summary = Restorer(DirectoryTarget(volume, target), workers=2).run(plan)

    assert summary.ok and _everything(target) == sorted(KEYS)
    assert calls == {}  # no link, no unlink, and no fchmod where the create gave 0600
    assert {(target / key).stat().st_mode & 0o777 for key in KEYS} == {0o600}


# -- directories this run made: their names are not looked up before staging (issue 19) ----


def _lookups(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names `stage` looks up in their directory before writing."""
    looked: list[str] = []
    real = targets.entry

    def entry(directory: int, name: str) -> os.stat_result | None:
        if not name.startswith(".restore-"):  # not a temp file's check in `commit`
            looked.append(name)
        return real(directory, name)

    monkeypatch.setattr(targets, "entry", entry)
    return looked


def test_names_are_looked_up_only_in_directories_the_run_did_not_make(volume, target, monkeypatch):
    """`a/` exists before the restore (it may hold anything: each name is looked up first);
    `c/` is made by the run, so only the run's own files can be in it."""
    (target / "a").mkdir()
    looked = _lookups(monkeypatch)
    plan = placed_plan(volume, ["a/1.txt", "a/2.txt", "c/4.txt", "c/5.txt"], DATA)

    summary = Restorer(DirectoryTarget(volume, target), workers=1).run(plan)

    assert summary.ok and summary.count(Status.RESTORED) == 4
    assert sorted(looked) == ["1.txt", "2.txt"]
    assert _everything(target) == ["a/1.txt", "a/2.txt", "c/4.txt", "c/5.txt"]


def _made(restore: DirectoryTarget, parts: tuple[str, ...]) -> bool:
    with restore.tree.directory(parts, create=False) as fd:
        return fd is not None and restore.tree.made(parts, fd)


def _plant(kind: str, path: Path, outside: Path) -> None:
    if kind == "file":
        path.write_bytes(b"written meanwhile")
    elif kind == "symlink":
        path.symlink_to(outside)
    else:
        path.mkdir()


@pytest.mark.parametrize("kind", ["file", "symlink", "directory"])
@pytest.mark.parametrize("overwrite", [False, True], ids=["refused", "--overwrite"])
def test_a_name_put_into_a_directory_the_run_made_is_never_replaced_unasked(
    volume, target, tmp_path, overwrite, kind
):
    """Another process (root, or the restoring user) puts a name into a directory the run
    made, before the run stages that name: not looked up, it is met when the file is named.
    Without --overwrite it is kept, as any name that appears meanwhile. With --overwrite a
    file or a symlink is replaced (the link itself: nothing is written where it points) and a
    directory fails the file, as it always did."""
    outside = tmp_path / "outside"
    outside.write_bytes(b"not the restore's")
    first, second = placed_plan(volume, ["d/1.txt", "d/2.txt"], DATA).items
    restore = DirectoryTarget(volume, target, overwrite=overwrite)
    staged = restore.stage(first, lambda _n: None)  # makes d/
    assert not isinstance(staged, Status) and _made(restore, ("d",))
    planted = target / "d" / "2.txt"
    _plant(kind, planted, outside)

    later = restore.stage(second, lambda _n: None)
    assert not isinstance(later, Status)  # staged: the name was not looked up
    errors = restore.commit([staged, later])

    assert errors[0] is None and (target / "d" / "1.txt").read_bytes() == DATA
    assert outside.read_bytes() == b"not the restore's"
    if overwrite and kind != "directory":
        assert errors[1] is None and not planted.is_symlink() and planted.read_bytes() == DATA
    else:
        assert errors[1] is not None
        if not overwrite:
            assert isinstance(errors[1], RestoreRefused) and "appeared meanwhile" in str(errors[1])
        if kind == "symlink":
            assert planted.is_symlink()
        elif kind == "directory":
            assert planted.is_dir() and not planted.is_symlink()
        else:
            assert planted.read_bytes() == b"written meanwhile"
    assert _temps(target) == []


def test_a_directory_moved_in_where_the_run_made_one_is_not_taken_for_it(volume, target):
    """The run made `d/`; someone who can write the target renames it away and puts a
    directory of their own, with a file in it, at `d`. It is another directory (inode), so
    its names are looked up as in any directory the run did not make: refused at once."""
    first, second = placed_plan(volume, ["d/1.txt", "d/2.txt"], DATA).items
    restore = DirectoryTarget(volume, target)
    made = restore.stage(first, lambda _n: None)
    assert not isinstance(made, Status)
    restore.discard([made])  # only `d/` is wanted from it
    os.rename(target / "d", target / "moved")
    (target / "d").mkdir()
    (target / "d" / "2.txt").write_bytes(b"theirs")

    assert not _made(restore, ("d",))
    with pytest.raises(RestoreRefused, match="exists with other content"):
        restore.stage(second, lambda _n: None)

    assert (target / "d" / "2.txt").read_bytes() == b"theirs"
    assert _temps(target) == []  # `moved/` too


def _after_mkdir(monkeypatch: pytest.MonkeyPatch, name: str, then: Callable[[], None]) -> None:
    """Run `then()` just after the restore's mkdir of `name` (tree.py), before it opens
    it: where another user, woken by inotify, would act."""
    real = os.mkdir

    def mkdir(path: str, mode: int = 0o777, *, dir_fd: int | None = None) -> None:
        real(path, mode, dir_fd=dir_fd)
        if os.path.basename(path) == name:
            then()

    monkeypatch.setattr(tree.os, "mkdir", mkdir)


@pytest.mark.parametrize("whose", ["root's, not empty", "another user's, empty"])
@pytest.mark.parametrize("made", ["out/sub", "out"], ids=["below the target", "the target"])
def test_a_directory_swapped_in_just_after_the_mkdir_keeps_its_mode(
    volume, tmp_path, monkeypatch, made, whose
):
    """Someone who may write the directory above renames the directory the restore has just
    made away and moves another one to its name before the restore opens it: root's
    `private/` (0700, its files), or an empty one of their own. It is not given --dir-mode,
    nor taken for a directory the run made (its names are looked up), and the restore says
    so."""
    target = tmp_path / "out"
    new = tmp_path / made
    if new != target:
        target.mkdir()
    os.chmod(new.parent, 0o777)  # other users may write it: the case this is about
    private = new.parent / "private"
    private.mkdir(mode=0o700)
    if whose == "root's, not empty":
        (private / "secret").write_bytes(b"root only\n")
    elif os.geteuid() == 0:
        os.chown(private, 4242, 4242)
    else:
        pytest.skip("only root can give a directory away")

    def swap() -> None:
        new.rename(new.with_name("gone"))
        private.rename(new)

    _after_mkdir(monkeypatch, new.name, swap)
    [item] = placed_plan(volume, ["sub/file.txt"], DATA).items
    restore = DirectoryTarget(volume, target, dir_mode=0o755)

    with structlog.testing.capture_logs() as logs:
        assert restore.restore(item, lambda _n: None) is Status.RESTORED

    assert (target / "sub" / "file.txt").read_bytes() == DATA
    assert stat.S_IMODE(new.stat().st_mode) == 0o700
    assert not _made(restore, new.relative_to(target).parts)
    [warned] = [e for e in logs if e["event"] == "restore.directory_replaced"]
    assert warned["path"] == str(new) and warned["log_level"] == "warning"


def test_threads_making_one_directory_do_not_take_each_other_for_a_swap(
    volume, target, monkeypatch
):
    """Two threads of one restore need the new `d/` at once: the one that finds it just
    made waits until the maker has looked at it (empty, `_just_made`), so its temp file is
    never taken for a sign of a swap: `d/` gets --dir-mode and counts as made."""
    first, second = placed_plan(volume, ["d/1.txt", "d/2.txt"], DATA).items
    restore = DirectoryTarget(volume, target, dir_mode=0o755)
    settled = threading.Event()  # the other thread has staged its file, or waits for the maker

    class Watched:
        """The tree's lock around making a directory; says when another thread waits."""

        def __init__(self, lock: threading.Lock) -> None:
            self.lock = lock

        def __enter__(self) -> None:
            if threading.current_thread() is not threading.main_thread():
                settled.set()
            self.lock.acquire()

        def __exit__(self, *_exc: object) -> None:
            self.lock.release()

    restore.tree._making_lock = Watched(restore.tree._making_lock)
    other: list[object] = []

    def stage_other() -> None:
        other.append(restore.stage(second, lambda _n: None))
        settled.set()

    thread = threading.Thread(target=stage_other)

    def start_other() -> None:
        thread.start()
        assert settled.wait(10)

    _after_mkdir(monkeypatch, "d", start_other)
    with structlog.testing.capture_logs() as logs:
        staged = restore.stage(first, lambda _n: None)
        thread.join(10)

    assert not isinstance(staged, Status) and not isinstance(other[0], Status)
    assert restore.commit([staged, other[0]]) == [None, None]
    assert stat.S_IMODE((target / "d").stat().st_mode) == 0o755
    assert _made(restore, ("d",))
    assert [e for e in logs if e["event"] == "restore.directory_replaced"] == []


def test_a_directory_others_may_write_is_looked_in_even_when_the_run_made_it(
    volume, target, monkeypatch
):
    """With a --dir-mode that lets the group or others write, anyone of them may have put a
    name in a directory the run made: its names are looked up first, as anywhere else, and
    again once named (they may also swap a temp file: `_name`)."""
    looked = _lookups(monkeypatch)
    plan = placed_plan(volume, ["c/4.txt", "c/5.txt"], DATA)

    summary = Restorer(DirectoryTarget(volume, target, dir_mode=0o770), workers=1).run(plan)

    assert summary.ok and sorted(looked) == ["4.txt", "4.txt", "5.txt", "5.txt"]
