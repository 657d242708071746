"""Ctrl-C twice during `backup-restore restore`: what the CLI says about temp files is true.

Ctrl-C is pressed the way test_restore.py's `first_interrupt_sets` test presses it
(`signal.raise_signal(SIGINT)` in the CLI's own thread, its handler installed): the first
sets the stop flag, the second raises KeyboardInterrupt where the restore is. Pressed here
from inside the commit of a batch (DirectoryTarget._name, once a file is named), and from
inside the cleanup itself (a third press while temp files are removed). Runs the CLI
in-process against in-process moto, files in tmp_path.
"""

from __future__ import annotations

import io
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.cli import restore as restore_cli
from agent.cli.restore import main
from agent.restore.durable import STALE_AFTER
from agent.restore.targets import DirectoryTarget
from tests.support.backed_up import BackedUp, write_config

FILES = {f"docs/f{index:02}.txt": b"content %d\n" % index for index in range(8)}
CtrlC = Callable[..., Any]


@pytest.fixture
def backups(aws: Any, volume: Any) -> BackedUp:
    backed_up = BackedUp(aws, volume)
    for key, body in FILES.items():
        backed_up.put(key, body)
    return backed_up


@pytest.fixture
def config_path(tmp_path: Path, backup_root: Path) -> Path:
    return write_config(tmp_path / "config.yaml", backup_root)


def restore_into(config_path: Path, out: Path) -> tuple[int, str]:
    stdout, err = io.StringIO(), io.StringIO()
    code = main(
        ["restore", "--config", str(config_path), "--all", "--to", str(out)], out=stdout, err=err
    )
    return code, err.getvalue()


def temp_files(directory: Path) -> list[str]:
    return sorted(
        os.path.relpath(os.path.join(d, f), directory)
        for d, _dirs, files in os.walk(directory)
        for f in files
        if f.startswith(".restore-") and f.endswith(".part")
    )


def ctrl_c_twice() -> None:
    signal.raise_signal(signal.SIGINT)  # stop after the files in progress
    signal.raise_signal(signal.SIGINT)  # abort: KeyboardInterrupt raised here


def abort_at_the_third_name_and_in_the_cleanup(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C twice as the batch's third file is named, and a third time as the cleanup
    starts removing the temp files (the stop flag is set: it raises there)."""
    real_name = DirectoryTarget._name
    calls = {"name": 0}

    def name_then_abort(self: DirectoryTarget, parent: int, one: Any, **kwargs: Any) -> Any:
        calls["name"] += 1
        if calls["name"] == 3:
            ctrl_c_twice()
        return real_name(self, parent, one, **kwargs)

    def interrupted_discard(self: DirectoryTarget, staged: Any) -> None:
        signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(DirectoryTarget, "_name", name_then_abort)
    monkeypatch.setattr(DirectoryTarget, "discard", interrupted_discard)


def test_a_second_ctrl_c_during_a_commit_leaves_no_temp_file_and_says_so(
    backups: BackedUp, config_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batch's first two files are named, the abort comes before the third: its temp
    file and the five after it are removed (before, those five stayed as .part files while
    the CLI said the rest were cleaned up)."""
    real = DirectoryTarget._name
    named: list[str] = []

    def name_then_abort(self: DirectoryTarget, parent: int, one: Any, **kwargs: Any) -> Any:
        if len(named) == 2:
            ctrl_c_twice()
        named.append(one.temp)
        return real(self, parent, one, **kwargs)

    monkeypatch.setattr(DirectoryTarget, "_name", name_then_abort)
    out = tmp_path / "out"

    code, err = restore_into(config_path, out)

    assert code == 130, err
    assert len(named) == 2 and temp_files(out) == []
    assert sorted(p.name for p in (out / "docs").iterdir()) == ["f00.txt", "f01.txt"]
    assert "the rest were not started or were cleaned up" in err


class AnHourOn(DirectoryTarget):
    """The CLI's target with a clock an hour ahead: the temp files on disk are as old as a
    crash's leftovers that a later restore removes (durable.STALE_AFTER)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, clock=lambda: time.time() + STALE_AFTER + 1, **kwargs)


def test_when_the_cleanup_is_interrupted_too_the_cli_names_what_was_left_and_a_later_run_sweeps_it(
    backups: BackedUp, config_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A third Ctrl-C while the temp files are removed: some stay. The CLI says which (it
    looks after the cleanup), not that they were cleaned up; the next restore into the same
    directory completes the restore beside them, and one an hour later removes them."""
    real_name = DirectoryTarget._name
    real_discard = DirectoryTarget.discard
    abort_at_the_third_name_and_in_the_cleanup(monkeypatch)
    out = tmp_path / "out"

    code, err = restore_into(config_path, out)

    left = temp_files(out)
    assert code == 130, err
    assert len(left) == 6  # the six files of the batch not named yet
    assert "cleaned up" not in err
    assert f"{len(left)} temp files were left: " in err and "and 3 more" in err
    assert str(out / left[0]) in err
    assert f"a restore into {out} an hour from now or later removes them" in err

    monkeypatch.setattr(DirectoryTarget, "_name", real_name)
    monkeypatch.setattr(DirectoryTarget, "discard", real_discard)
    code, err = restore_into(config_path, out)

    assert code == 0, err
    assert temp_files(out) == left  # changed within the hour: another restore's, maybe
    restored = {f"docs/{p.name}": p.read_bytes() for p in (out / "docs").iterdir()}
    assert {key: body for key, body in restored.items() if key not in left} == FILES

    monkeypatch.setattr(restore_cli, "DirectoryTarget", AnHourOn)
    code, err = restore_into(config_path, out)

    assert code == 0, err
    assert temp_files(out) == []
    assert {f"docs/{p.name}": p.read_bytes() for p in (out / "docs").iterdir()} == FILES


def test_a_directory_that_cannot_be_looked_in_after_the_abort_is_not_called_clean(
    backups: BackedUp, config_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cleanup is interrupted and the directory then cannot be read (an error, or it
    became unsafe): the CLI says it could not check it, not that the rest were cleaned up
    (before, the error was suppressed and the directory counted as clean)."""
    real_left_behind = DirectoryTarget.left_behind
    real_scandir = os.scandir

    def unreadable(fd: Any) -> Any:
        raise PermissionError(13, "Permission denied")

    def left_behind_unreadable(self: DirectoryTarget, items: Any) -> Any:
        monkeypatch.setattr(os, "scandir", unreadable)  # only while it looks
        try:
            return real_left_behind(self, items)
        finally:
            monkeypatch.setattr(os, "scandir", real_scandir)

    abort_at_the_third_name_and_in_the_cleanup(monkeypatch)
    monkeypatch.setattr(DirectoryTarget, "left_behind", left_behind_unreadable)
    out = tmp_path / "out"

    code, err = restore_into(config_path, out)

    assert code == 130, err
    assert len(temp_files(out)) == 6
    assert "cleaned up" not in err
    assert f"1 directories could not be checked for temp files: {out / 'docs'}" in err
