"""A hostile restore directory (issue 16, item 1): while a root restore runs, a user who can
write the target keeps swapping one of its directories for a symlink to somewhere else and
back. Nothing may ever appear outside the target, --dry-run must never look through the
link, and verify must never read a copy through a swapped directory on the volume.

The assertions hold whatever the interleaving (a correct walk never leaves the target; a
walk by path string fails them as soon as one swap lands between its check and its open):
they cannot fail by chance. `make test` runs a few thousand steps (well under 20 s);
`make soak` runs many more.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zstandard

from agent.restore.restorer import Restorer
from agent.restore.targets import DirectoryTarget, Status
from agent.restore.verify import verify
from tests.support.stored import placed_plan, stored_record

DATA = b"restored by root\n"


class Swapper(threading.Thread):
    """Keeps moving the directory at `path` aside (to a fresh name beside it, so nothing is
    ever replaced or lost), putting a symlink to `outside` in its place for a moment, then a
    new empty directory for a moment. With `watch`, it lists `outside` after every step: a
    file there even for a moment is seen.
    """

    HOLD = 0.0002  # seconds each state is held: the attacker's pace, lets restores run into it

    def __init__(self, path: Path, outside: Path, *, watch: bool = True) -> None:
        super().__init__(name="swapper", daemon=True)
        self.path = path
        self.outside = outside
        self.watch = watch
        self.swaps = 0
        self.seen: set[str] = set()
        self.swapping = threading.Event()
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            with contextlib.suppress(OSError):
                os.rename(self.path, self.path.with_name(f"aside-{self.swaps}"))
            with contextlib.suppress(OSError):
                os.symlink(self.outside, self.path)
            self._look()
            time.sleep(self.HOLD)
            with contextlib.suppress(OSError):
                os.unlink(self.path)  # only ever the symlink: unlink refuses a directory
            with contextlib.suppress(OSError):
                os.mkdir(self.path)
            self._look()
            time.sleep(self.HOLD)
            self.swaps += 1
            self.swapping.set()

    def _look(self) -> None:
        if self.watch:
            for directory, dirs, files in os.walk(self.outside):
                self.seen.update(os.path.join(directory, name) for name in [*dirs, *files])

    @contextlib.contextmanager
    def running(self) -> Iterator[Swapper]:
        self.start()
        assert self.swapping.wait(10), "the swapper never swapped"
        try:
            yield self
        finally:
            self.done.set()
            self.join(10)
        self._look()


def _names_under(directory: Path) -> set[str]:
    return {name for _d, _dirs, files in os.walk(directory) for name in files}  # no link followed


def swap_while_restoring(volume, tmp_path: Path, files: int) -> None:
    target, outside = tmp_path / "out", tmp_path / "elsewhere"
    (target / "sub").mkdir(parents=True)
    outside.mkdir()
    keys = [f"sub/deep/f{i}" if i % 2 else f"sub/f{i}" for i in range(files)]
    plan = placed_plan(volume, keys, DATA)
    restore = DirectoryTarget(volume, target)

    with Swapper(target / "sub", outside).running() as swapper:
        summary = Restorer(restore, workers=4).run(plan)
    restore.close()

    assert swapper.seen == set(), f"written outside the target: {sorted(swapper.seen)[:5]}"
    assert list(outside.iterdir()) == []
    restored = {r.item.key.rsplit("/", 1)[1] for r in summary.results if r.ok}
    assert restored <= _names_under(target)  # all restored files are in the target (moved aside)
    for result in summary.failed:  # the others were refused, or lost their directory meanwhile
        assert result.error and any(
            reason in result.error for reason in ("is a symlink", "changed while", "No such file")
        ), result.error
    assert swapper.swaps > 0 and summary.count(Status.RESTORED) + len(summary.failed) == files


def test_swapping_a_directory_for_a_symlink_never_lets_a_restore_out(volume, tmp_path):
    swap_while_restoring(volume, tmp_path, files=1500)


@pytest.mark.soak
def test_swapping_directories_through_a_long_restore(volume, tmp_path):
    swap_while_restoring(volume, tmp_path, files=30_000)


def test_a_dry_run_never_looks_through_a_swapped_directory(volume, tmp_path):
    """Outside holds files with the backed-up content: a dry run that followed the link
    would say "exists with the same content" — an oracle on files root can read."""
    target, outside = tmp_path / "out", tmp_path / "elsewhere"
    (target / "sub").mkdir(parents=True)
    outside.mkdir()
    plan = placed_plan(volume, [f"sub/f{i}" for i in range(50)], DATA)
    for i in range(50):
        (outside / f"f{i}").write_bytes(DATA)
    dry = DirectoryTarget(volume, target)

    notes: set[str | None] = set()
    with Swapper(target / "sub", outside, watch=False).running():
        for _round in range(40):
            notes.update(dry.check(item) for item in plan.items)
    dry.close()

    assert "exists with the same content" not in notes
    assert all(note is None or note.startswith("would fail: ") for note in notes), notes


def test_verify_never_reads_a_copy_through_a_swapped_directory(volume, tmp_path):
    """The copy's directory on the volume is swapped for a symlink to a directory holding a
    bogus copy under the same name: a verify that read it would report it as corrupt."""
    record = stored_record(volume, "file.txt", DATA)
    sha = record.sha256 or ""
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    bogus = zstandard.ZstdCompressor().compress(b"not the recorded bytes\n")
    (outside / f"{sha}.zst").write_bytes(bogus)

    errors: set[str] = set()
    with Swapper(volume.copy_path(sha).parent, outside, watch=False).running():
        for _round in range(300):
            errors.update(p.error for p in verify(volume, [record], workers=1).problems)

    allowed = {  # the directory was moved aside, or the link was met and not followed
        f"stored copy {sha} is missing",
        f"copy {sha} is reached through a symlink or is not a file (not followed)",
    }
    assert errors <= allowed, errors  # reading the bogus copy would say "expands past" or so
