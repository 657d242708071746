"""What every command-line tool shares: the exit codes and how problems are printed.

The one table of exit codes (`backup-agent`, `backup-restore`, `bootstrap-aws`,
`mount-snapshot`): an operator's script can tell "fix the config" from "mount the
volume" from "something failed, look at the log" the same way for each of them.
"""

from __future__ import annotations

import argparse
import atexit
import gc
import json
import os
import sys
import textwrap
from collections.abc import Callable, Iterable
from enum import IntEnum
from typing import IO, Any

from agent.aws import unavailable
from agent.cli.output import printable_key
from agent.config import CONFIG_OPTION_HELP
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


# -- options every command takes, before or after its name ---------------------------------


def anywhere(top: bool, default: Any = None) -> Any:
    """The default of an option accepted both before and after the command name: the real
    default on the top-level parser, SUPPRESS on each command's, so a value given before the
    command name is not overwritten by the command's own default (`prog --config X cmd`)."""
    return default if top else argparse.SUPPRESS


def add_global_options(
    parser: argparse.ArgumentParser, *, top: bool, config_help: str = CONFIG_OPTION_HELP
) -> None:
    """`--config FILE`, `--json`, `-q`/`--quiet`, `-v`/`--verbose`: the same for every command
    of every tool. Call it on the top-level parser (top=True) and on each command's."""
    parser.add_argument("--config", metavar="FILE", default=anywhere(top), help=config_help)
    parser.add_argument(
        "--json",
        action="store_true",
        default=anywhere(top, False),
        help="machine-readable output on stdout: JSON (schemas in docs/operations.md)",
    )
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=anywhere(top, False),
        help="print only results, warnings and errors: no progress, no log lines below WARNING",
    )
    verbosity.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=anywhere(top, False),
        help="log at DEBUG (overrides logging.level)",
    )


def log_level(args: argparse.Namespace, configured: str) -> str:
    """The level to log at: -v DEBUG, -q WARNING (or the config's, when higher), else the
    config's `logging.level`."""
    if getattr(args, "verbose", False):
        return "DEBUG"
    if getattr(args, "quiet", False) and configured in ("DEBUG", "INFO"):
        return "WARNING"
    return configured


def add_workers_option(parser: argparse.ArgumentParser, help_text: str, **kwargs: Any) -> None:
    """`--workers N`: a whole number of at least 1, refused up front otherwise (exit 2)."""
    parser.add_argument("--workers", type=positive_int, metavar="N", help=help_text, **kwargs)


def positive_int(text: str) -> int:
    """An argparse type: 1, 2, … (`--workers 0` would run nothing and wait forever)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: at least 1")
    return value


def s3_key(text: str) -> str:
    """An argparse type for a key: S3 keys have at least one character. An empty --key (a
    script's unset variable) was taken as no key at all: `restore --key ""` restored the
    whole bucket, deleted keys included (a review, 2026-12-02)."""
    if not text:
        raise argparse.ArgumentTypeError("empty: an S3 key has at least one character")
    return text


def print_json(document: Any, out: IO[str] | None = None) -> None:
    """One JSON document on stdout (dates as ISO-8601 strings)."""
    print(json.dumps(document, indent=2, default=_json_default), file=out or sys.stdout)


def _json_default(value: Any) -> Any:
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def add_command(
    commands: Any, name: str, handler: Any, help_text: str, *example_lines: str
) -> argparse.ArgumentParser:
    """One subcommand as both CLIs make it: its help as the description, its examples as the
    epilog, the shared options (accepted after the command name too) and its handler."""
    sub: argparse.ArgumentParser = commands.add_parser(
        name,
        help=help_text,
        description=help_text,
        formatter_class=HelpFormatter,
        epilog=examples(*example_lines) if example_lines else None,
    )
    add_global_options(sub, top=False)
    sub.set_defaults(handler=handler)
    return sub


def examples(*lines: str) -> str:
    """A `--help` epilog: "examples:" and one indented command line each."""
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Help lines wrapped between words only: never inside `/etc/backup-agent/config.yaml`
    or `--source-bucket` (argparse breaks at hyphens by default); descriptions and the
    examples epilog as written."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        text = " ".join(text.split())
        return textwrap.wrap(text, width, break_on_hyphens=False, break_long_words=False)


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


# At exit, once every exit handler registered after this one has run: the objects left are
# moved out of the collector's reach, so the interpreter's teardown frees them by reference
# counting alone instead of walking all of them again in its collections. Importing the CLI
# (pydantic models, botocore) left ~50,000 objects whose teardown took 0.13-0.35 s under
# load after the last line of a large restore; with this, 0.02-0.04 s (docs/benchmarks.md).
# Nothing of ours waits for the collector then: files are closed and flushed, the audit
# fsynced. In a test process it runs once, when pytest exits.
atexit.register(gc.freeze)


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
