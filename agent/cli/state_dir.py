"""Where a command keeps small files of its own on this machine, outside the backup volume.

systemd's state directory (`$STATE_DIRECTORY`, `StateDirectory=backup-agent`: the first if
it lists several), or outside systemd a per-user one (`$XDG_STATE_HOME/backup-agent`, else
`~/.local/state/backup-agent`, made 0700 and required to belong to the user); never a fixed
name in /tmp, where anyone could plant a link for root to write through. The directory is
opened with O_NOFOLLOW, and what is kept in it is reached through that descriptor.

Used by the rejected-config alert's dedup state (agent/cli/rejected_config.py) and by the
fleet restore's one-run-per-member lock (`backup-restore restore --fleet`).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def state_dir() -> tuple[Path, bool]:
    """Where the state lives, and whether it is a per-user directory to keep 0700.

    systemd's StateDirectory= ($STATE_DIRECTORY; the first if it lists several), else
    $XDG_STATE_HOME/backup-agent, else ~/.local/state/backup-agent.
    """
    systemd = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    if systemd:
        return Path(systemd), False
    xdg = os.environ.get("XDG_STATE_HOME", "")
    base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".local" / "state"
    return base / "backup-agent", True


def open_state_dir(directory: Path, *, private: bool) -> int:
    """A descriptor of `directory`, never through a symbolic link at its last component.

    A per-user directory is created 0700 if missing, and must belong to this user (it is
    made 0700 if it was more open); OSError otherwise.
    """
    if private:
        os.makedirs(directory.parent, mode=0o700, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            os.mkdir(directory, 0o700)
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    if private:
        info = os.fstat(fd)
        if info.st_uid != os.geteuid():
            os.close(fd)
            raise PermissionError(f"{directory} belongs to uid {info.st_uid}, not to this user")
        if info.st_mode & 0o077:
            os.fchmod(fd, 0o700)
    return fd
