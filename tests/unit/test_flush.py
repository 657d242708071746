"""The flush before CreateSnapshot: fsfreeze only where it is possible and safe, else sync."""

from __future__ import annotations

import subprocess
from pathlib import Path

from agent.snapshots.flush import Flusher, has_capability

ALL_CAPS = "CapEff:\t000001ffffffffff\n"
NO_CAPS = "CapEff:\t0000000000000000\n"


def fake_proc(tmp_path: Path, caps: str, mount_point: str) -> Path:
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "status").write_text(f"Name:\tbackup-agent\n{caps}")
    (proc / "self" / "mountinfo").write_text(
        "27 1 254:0 / / rw - ext4 /dev/nvme0n1p1 rw\n"
        f"41 27 259:3 / {mount_point} rw - xfs /dev/nvme1n1 rw\n"
    )
    return proc


class Recorder:
    def __init__(self, fail: set[str] = frozenset()) -> None:
        self.commands: list[list[str]] = []
        self.fail = fail

    def __call__(self, command, **_):
        self.commands.append(command)
        code = 1 if command[1] in self.fail else 0
        return subprocess.CompletedProcess(command, code, "", "fsfreeze: error")


def test_capability_bits_are_read_from_proc_status(tmp_path):
    assert has_capability(21, fake_proc(tmp_path / "a", ALL_CAPS, "/mnt/b"))
    assert not has_capability(21, fake_proc(tmp_path / "b", NO_CAPS, "/mnt/b"))


def test_freezes_and_unfreezes_a_dedicated_mount_around_the_body(tmp_path):
    root = tmp_path / "backups"
    root.mkdir()
    run = Recorder()
    synced: list[Path] = []
    flusher = Flusher(
        proc_root=fake_proc(tmp_path, ALL_CAPS, str(root)),
        which=lambda _: "/usr/sbin/fsfreeze",
        run=run,
        sync=synced.append,
    )
    with flusher.flushed(root) as method:
        assert run.commands == [["fsfreeze", "--freeze", str(root)]]
    assert method == "fsfreeze"
    assert run.commands[-1] == ["fsfreeze", "--unfreeze", str(root)]
    assert synced == []


def test_without_the_capability_it_syncs(tmp_path):
    root = tmp_path / "backups"
    run = Recorder()
    synced: list[Path] = []
    flusher = Flusher(
        proc_root=fake_proc(tmp_path, NO_CAPS, str(root)),
        which=lambda _: "/usr/sbin/fsfreeze",
        run=run,
        sync=synced.append,
    )
    with flusher.flushed(root) as method:
        pass
    assert method == "sync" and synced == [root] and run.commands == []


def test_never_freezes_a_shared_filesystem_or_the_root(tmp_path):
    caps = fake_proc(tmp_path, ALL_CAPS, "/mnt/data")
    flusher = Flusher(proc_root=caps, which=lambda _: "/usr/sbin/fsfreeze", run=Recorder())
    assert flusher.freezable_mount(Path("/mnt/data/backups")) is None  # a subdirectory
    assert flusher.freezable_mount(Path("/srv/backups")) is None  # on /
    assert flusher.freezable_mount(Path("/mnt/data")) == Path("/mnt/data")


def test_a_failed_freeze_falls_back_to_sync(tmp_path):
    root = tmp_path / "backups"
    root.mkdir()
    synced: list[Path] = []
    flusher = Flusher(
        proc_root=fake_proc(tmp_path, ALL_CAPS, str(root)),
        which=lambda _: "/usr/sbin/fsfreeze",
        run=Recorder(fail={"--freeze"}),
        sync=synced.append,
    )
    with flusher.flushed(root) as method:
        pass
    assert method == "sync" and synced == [root]


def test_the_real_sync_runs_on_a_directory(tmp_path):
    with Flusher(which=lambda _: None).flushed(tmp_path) as method:
        assert method == "sync"
