"""What every command-line tool shares: the exit codes and how problems are printed.

The one table of exit codes (`backup-agent`, `backup-restore`, `bootstrap-aws`,
`mount-snapshot`): an operator's script can tell "fix the config" from "mount the
volume" from "something failed, look at the log" the same way for each of them.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable
from enum import IntEnum
from typing import IO

from agent.aws import unavailable
from agent.cli.output import printable_key
from agent.errors import BackupAgentError, ConfigError, VolumeNotReady


class ExitCode(IntEnum):
    OK = 0
    FAILURE = 1  # at run time: some items failed, an AWS call was refused, …
    USAGE = 2  # the command line or the configuration is wrong: fix it and run again
    VOLUME_NOT_READY = 3  # the backup volume is not mounted or not initialised
    AWS_UNAVAILABLE = 4  # no AWS credentials, or AWS cannot be reached (network, endpoint)
    INTERRUPTED = 130  # Ctrl-C (128 + SIGINT, as a shell reports it)
    BROKEN_PIPE = 141  # the reader of the output went away (`| head`; 128 + SIGPIPE)


class StatusCode(IntEnum):
    """`backup-agent status` only: its exit code is the health it reports (for a script or a
    monitoring check), a table of its own beside ExitCode's."""

    OK = 0  # running, nothing needs a person
    DEGRADED = 1  # running, but something needs a look (paused, dead letters, failures, …)
    DOWN = 2  # the agent is not running, or the backup volume is not ready


def exit_code_for(error: BackupAgentError) -> ExitCode:
    """The exit code for an error that ends a command."""
    if isinstance(error, VolumeNotReady):
        return ExitCode.VOLUME_NOT_READY
    if isinstance(error, ConfigError):
        return ExitCode.USAGE
    return ExitCode.FAILURE


def print_problems(stream: IO[str], heading: str, problems: Iterable[str]) -> None:
    """`heading` then one indented line per problem (each names its config key), escaped:
    a problem quotes the file's own keys and values, and the heading its path."""
    print(printable_key(heading), file=stream)
    for problem in problems:
        print(f"  {printable_key(problem)}", file=stream)


def guarded(prog: str, run: Callable[[], int], *, err: IO[str] | None = None) -> int:
    """`run()`, with what must never reach a person as a traceback turned into one line on
    stderr and its exit code: no credentials or no network (AWS_UNAVAILABLE), Ctrl-C
    (INTERRUPTED), and a closed output pipe (BROKEN_PIPE, silent: `| head` did it on purpose).
    Every command-line entry point's main goes through it."""
    stream = err or sys.stderr
    try:
        return run()
    except KeyboardInterrupt:
        print(f"\n{prog}: interrupted", file=stream)
        return ExitCode.INTERRUPTED
    except BrokenPipeError:
        _silence_stdout()
        return ExitCode.BROKEN_PIPE
    except Exception as exc:
        line = unavailable(exc)
        if line is None:
            raise  # a bug: the traceback is what a report needs
        print(f"{prog}: {printable_key(line)}", file=stream)
        return ExitCode.AWS_UNAVAILABLE


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's last flush does not fail again
    ("Exception ignored … BrokenPipeError")."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass  # not a real file (a test's capture): nothing to flush
