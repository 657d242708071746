"""A fleet restore's lock on its job (agent/restore/job.py `one_run`): one run per member."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.restore import job
from agent.restore.job import RunRefused, lock_name, one_run


@pytest.fixture
def directory(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    yield fd, tmp_path
    os.close(fd)


def test_one_run_per_job_and_member_and_the_file_goes_with_it(directory):
    fd, path = directory
    with one_run(fd, path, "j-1", "host/vol-a"):
        busy = "j-1 is already running on this member"
        with pytest.raises(RunRefused, match=busy), one_run(fd, path, "j-1", "host/vol-a"):
            pass
        with one_run(fd, path, "j-1", "host/vol-b"), one_run(fd, path, "j-2", "host/vol-a"):
            pass  # another member (two agents on one host), another job: side by side
        [held] = path.iterdir()
        assert held.name == lock_name("j-1", "host/vol-a")
        assert held.stat().st_mode & 0o777 == 0o600
    assert list(path.iterdir()) == []
    with one_run(fd, path, "j-1", "host/vol-a"):  # released
        pass


def test_a_planted_link_is_not_followed(directory, tmp_path_factory):
    fd, path = directory
    target = tmp_path_factory.mktemp("elsewhere") / "precious"
    target.write_bytes(b"keep")
    (path / lock_name("j-1", "m")).symlink_to(target)

    with pytest.raises(RunRefused, match="cannot open its lock"), one_run(fd, path, "j-1", "m"):
        pass

    assert target.read_bytes() == b"keep"
    assert (path / lock_name("j-1", "m")).is_symlink()  # left as it was


def test_something_other_than_a_file_is_refused(directory):
    fd, path = directory
    os.mkfifo(path / lock_name("j-1", "m"))
    with pytest.raises(RunRefused, match="not a regular file"), one_run(fd, path, "j-1", "m"):
        pass


def test_a_run_that_opened_the_file_its_predecessor_removed_takes_the_new_one(
    directory, monkeypatch
):
    """The one that ends removes its file: a run that opened it just before gets the flock
    on a file no name leads to, and must not count that as the lock (a third run would
    create the name afresh and run alongside)."""
    fd, path = directory
    first = one_run(fd, path, "j-1", "m")
    first.__enter__()
    opened = job._lock_file
    ended = False

    def open_then_predecessor_ends(*args: object) -> int:
        nonlocal ended
        lock = opened(*args)  # type: ignore[arg-type]
        if not ended:
            ended = True
            first.__exit__(None, None, None)  # removes the file this run just opened
        return lock

    monkeypatch.setattr(job, "_lock_file", open_then_predecessor_ends)
    with one_run(fd, path, "j-1", "m"):
        assert ended
        [held] = path.iterdir()  # a new file, the one this run holds
        assert held.name == lock_name("j-1", "m")
        with pytest.raises(RunRefused), one_run(fd, path, "j-1", "m"):
            pass
    assert list(path.iterdir()) == []


def test_the_cli_keeps_it_in_a_directory_of_the_user_s_own(tmp_path, monkeypatch):
    from datetime import UTC, datetime

    from agent.cli.restore import _one_run_here
    from agent.restore.job import RestoreJob

    state = tmp_path / "state"
    monkeypatch.setenv("XDG_STATE_HOME", str(state))
    run = RestoreJob(
        None,  # type: ignore[arg-type]
        "t",
        "j-1",
        member_id="m",
        volume_id="vol-a",
        clock=lambda: datetime.now(UTC),
    )
    with _one_run_here(run):
        assert (state / "backup-agent").stat().st_mode & 0o777 == 0o700
        assert [p.name for p in (state / "backup-agent").iterdir()] == [lock_name("j-1", "m")]

    (state / "backup-agent").rmdir()
    (state / "backup-agent").symlink_to(tmp_path)  # a link planted as the directory
    with pytest.raises(RunRefused, match="cannot keep its lock in"), _one_run_here(run):
        pass
    assert not any(p.name.startswith("restore-job-") for p in tmp_path.iterdir())
