"""Did the consumer's last run end well? What makes receiving ahead safe by default.

A message received ahead of the workers (`consumer.receive_ahead`) counts one receive
toward the queue's `maxReceiveCount` even if no worker ever starts it: when the agent is
killed, or gives it back on stop or on a pause. An agent that restarted in a loop with
messages waiting ahead each time could walk messages nobody attempted into the
dead-letter queue.

So a run receives ahead only if the run before it ended well: stopped (no crash, no kill)
without giving back a message no worker had started. A file on the backup volume,
`.backup-agent-running`, is created (and made durable) when a run starts and removed when
it ends well; found at start, the last run did not. Within a run, giving back a message
received ahead (a pause) ends receiving ahead until the next start.

What that bounds: in any stretch of runs that all end badly (a crash loop, a restart
loop, a volume that keeps filling), only the first receives ahead, so a message pays at
most one receive it was not attempted for; every other receive of it started it. A crash
loop can then dead-letter only messages that were attempted `maxReceiveCount - 1` times.
A run that cannot tell (the file cannot be made: read-only or full volume) does not
receive ahead.
"""

from __future__ import annotations

import os
from pathlib import Path

import structlog

from agent.storage.volume import fsync_directory

log = structlog.get_logger("agent.consumer")

RUNNING_NAME = ".backup-agent-running"


class LastRun:
    """The `.backup-agent-running` file in `directory` (the backup volume's root)."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / RUNNING_NAME

    def begin(self) -> bool:
        """Mark this run as under way; True if the last one ended well (safe to receive
        ahead), False if it did not, or if this run could not be marked."""
        ended_well = not self.path.exists()
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            fsync_directory(self.path.parent)
        except OSError as exc:
            log.warning(
                "consumer.run_unmarked",
                path=str(self.path),
                error=str(exc),
                why="receiving ahead stays off for this run",
            )
            return False
        if not ended_well:
            log.info(
                "consumer.receive_ahead_held",
                why="the last run was killed or gave back messages no worker started;"
                " receiving ahead resumes after a run that ends well",
            )
        return ended_well

    def end(self, *, well: bool) -> None:
        """This run is over; `well`: stopped without giving back a message never started."""
        if not well:
            return
        try:
            self.path.unlink(missing_ok=True)
            fsync_directory(self.path.parent)
        except OSError as exc:
            log.warning("consumer.run_unmarked", path=str(self.path), error=str(exc))
