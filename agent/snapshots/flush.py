"""Make the backup filesystem's on-disk state complete before a snapshot starts.

`fsfreeze --freeze` where the agent may and it is safe (CAP_SYS_ADMIN, the tool
installed, and the backup root is itself a mount point, never `/`); otherwise `sync()`
plus `syncfs()` of the backup filesystem. Either way the snapshot is at least
crash-consistent, and every copy, journal line and marker written before the barrier
is in it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import structlog

from agent.errors import BackupAgentError
from agent.storage import syscalls
from agent.storage.volume_id import mount_of

log = structlog.get_logger("agent.flush")

CAP_SYS_ADMIN = 21
UNFREEZE_ATTEMPTS = 5


class Flusher:
    """`flushed(root)` is the context CreateSnapshot is started in."""

    def __init__(
        self,
        *,
        proc_root: Path = Path("/proc"),
        which: Callable[[str], str | None] = shutil.which,
        run: Callable[..., Any] = subprocess.run,
        sync: Callable[[Path], None] | None = None,
    ) -> None:
        self.proc_root = proc_root
        self._which = which
        self._run = run
        self._sync = sync or sync_filesystem

    @contextlib.contextmanager
    def flushed(self, root: Path) -> Iterator[str]:
        """Yields the method used: "fsfreeze" or "sync"."""
        mount_point = self.freezable_mount(root)
        if mount_point is not None and self._freeze(mount_point):
            try:
                yield "fsfreeze"
            finally:
                self._unfreeze(mount_point)
            return
        self._sync(root)
        yield "sync"

    def freezable_mount(self, root: Path) -> Path | None:
        """The mount point to freeze, or None when freezing is not possible or not safe."""
        tool = self._which("fsfreeze")
        if tool is None or not has_capability(CAP_SYS_ADMIN, self.proc_root):
            return None
        try:
            mount_point = mount_of(root, self.proc_root).mount_point
        except (OSError, BackupAgentError) as exc:
            log.warning("snapshot.flush_no_mount", root=str(root), reason=str(exc))
            return None
        if mount_point == Path("/"):
            return None  # freezing the root filesystem would hang the whole instance
        if mount_point != Path(root).resolve():
            return None  # a directory on a shared filesystem: freezing would stall others
        return mount_point

    def _freeze(self, mount_point: Path) -> bool:
        result = self._run(
            ["fsfreeze", "--freeze", str(mount_point)], capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            log.warning(
                "snapshot.freeze_failed", mount=str(mount_point), stderr=result.stderr.strip()
            )
            return False
        return True

    def _unfreeze(self, mount_point: Path) -> None:
        for attempt in range(1, UNFREEZE_ATTEMPTS + 1):
            result = self._run(
                ["fsfreeze", "--unfreeze", str(mount_point)],
                capture_output=True,
                text=True,
                check=False,
            )
            if result.returncode == 0:
                return
            log.error(
                "snapshot.unfreeze_failed",
                mount=str(mount_point),
                attempt=attempt,
                stderr=result.stderr.strip(),
            )
        raise OSError(f"fsfreeze --unfreeze {mount_point} failed: writes to it are blocked")


def has_capability(bit: int, proc_root: Path = Path("/proc")) -> bool:
    """Whether this process's effective capability set holds `bit`."""
    try:
        status = (proc_root / "self" / "status").read_text(encoding="ascii")
    except OSError:
        return False
    for line in status.splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> bit & 1)
    return False


def sync_filesystem(root: Path) -> None:
    """sync(2), then syncfs(2) on the backup filesystem (reports its errors, unlike sync)."""
    os.sync()
    function = syscalls.SYNCFS
    if function is None:
        return
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        syscalls.syncfs(fd, function)
    except OSError as exc:
        raise OSError(exc.errno, f"syncfs {root}: {exc.strerror}") from None
    finally:
        os.close(fd)
