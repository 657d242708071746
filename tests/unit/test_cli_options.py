"""The options every command shares: accepted before and after the command name, -q/-v,
--workers checked up front, and a help line for every option of every tool."""

from __future__ import annotations

import argparse
import io
from collections.abc import Iterator

import pytest

from agent.cli import agent, bootstrap, mount_snapshot, restore
from agent.cli.common import ExitCode, log_level, positive_int

EMPTY_KEY = "argument --key: empty: an S3 key has at least one character"
PARSERS = {
    "backup-agent": agent.build_parser,
    "backup-restore": restore.build_parser,
    "bootstrap-aws": bootstrap.build_parser,
    "mount-snapshot": mount_snapshot.build_parser,
}


def _walk(
    parser: argparse.ArgumentParser, path: str
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _walk(sub, f"{path} {name}")


def _every_parser() -> Iterator[tuple[str, argparse.ArgumentParser]]:
    for prog, build in PARSERS.items():
        yield from _walk(build(), prog)


def test_every_command_and_option_of_every_tool_has_a_help_line():
    missing = []
    for path, parser in _every_parser():
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                missing += [
                    f"{path} {choice.dest}" for choice in action._choices_actions if not choice.help
                ]
                continue
            if not action.help or action.help == argparse.SUPPRESS:
                missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")
    assert missing == []


def test_every_tool_and_command_shows_examples_in_its_help():
    without = [
        path
        for path, parser in _every_parser()
        if "examples:" not in parser.format_help() and not path.endswith(" run")
    ]
    assert without == []


def test_help_lines_are_not_cut_inside_a_word(monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    for path, parser in _every_parser():
        text = parser.format_help()
        cut = [line for line in text.splitlines() if line.endswith("-") and line[-2:] != " -"]
        assert cut == [], path  # "/etc/backup-" then "agent/config.yaml" on the next line


@pytest.mark.parametrize(
    "argv",
    [
        ["--config", "X.yaml", "--json", "-q", "status"],
        ["status", "--config", "X.yaml", "--json", "-q"],
        ["--json", "status", "--config", "X.yaml", "--quiet"],
    ],
)
def test_backup_agent_takes_its_global_options_before_or_after_the_command(argv):
    args = agent.build_parser().parse_args(argv)
    assert (args.config, args.json, args.quiet, args.verbose) == ("X.yaml", True, True, False)
    assert args.handler is agent.cmd_status


@pytest.mark.parametrize(
    "argv",
    [
        ["--offline", "--root", "/mnt/snap", "--source-bucket", "b", "--config", "X", "list"],
        ["list", "--offline", "--root", "/mnt/snap", "--source-bucket", "b", "--config", "X"],
        ["--offline", "--config", "X", "list", "--root", "/mnt/snap", "--source-bucket", "b"],
    ],
)
def test_backup_restore_takes_its_shared_options_before_or_after_the_command(argv):
    args = restore.build_parser().parse_args([*argv, "-v"])
    assert (args.offline, args.root, args.source_bucket, args.config) == (
        True,
        "/mnt/snap",
        "b",
        "X",
    )
    assert args.verbose and not args.quiet and not args.json


def test_an_option_after_the_command_wins_over_the_same_before_it():
    args = agent.build_parser().parse_args(["--config", "A", "status", "--config", "B"])
    assert args.config == "B"


def test_defaults_when_no_global_option_is_given():
    args = agent.build_parser().parse_args(["gc"])
    assert (args.config, args.json, args.quiet, args.verbose) == (None, False, False, False)


def test_quiet_and_verbose_together_are_refused(capsys):
    with pytest.raises(SystemExit) as exit_:
        agent.build_parser().parse_args(["status", "-q", "-v"])
    assert exit_.value.code == ExitCode.USAGE
    assert "not allowed with argument" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("quiet", "verbose", "configured", "level"),
    [
        (False, False, "INFO", "INFO"),
        (False, True, "ERROR", "DEBUG"),
        (True, False, "INFO", "WARNING"),
        (True, False, "DEBUG", "WARNING"),
        (True, False, "ERROR", "ERROR"),  # -q never makes the log louder
    ],
)
def test_quiet_and_verbose_set_the_log_level(quiet, verbose, configured, level):
    args = argparse.Namespace(quiet=quiet, verbose=verbose)
    assert log_level(args, configured) == level


@pytest.mark.parametrize(
    ("tool", "argv", "said"),
    [
        (agent.main, ["reindex", "--workers", "0"], "argument --workers"),
        (agent.main, ["reindex", "--workers", "many"], "argument --workers"),
        (restore.main, ["restore", "--all", "--to", "/tmp/x", "--workers", "0"], "--workers"),
        (restore.main, ["verify", "--workers", "-3"], "argument --workers"),
        # a script's unset variable: `--key ""` was taken as no key, so `restore` restored the
        # whole bucket, deleted keys included (a review, 2026-12-02)
        (restore.main, ["restore", "--key", "", "--to", "/tmp/x"], EMPTY_KEY),
        (restore.main, ["restore", "--key", "", "--to-s3"], EMPTY_KEY),
        (restore.main, ["share", "--key", ""], EMPTY_KEY),
        (mount_snapshot.main, ["find", "--key", ""], EMPTY_KEY),
    ],
)
def test_bad_values_are_refused_before_anything_runs(tool, argv, said, capsys):
    with pytest.raises(SystemExit) as exit_:
        tool(argv)
    assert exit_.value.code == ExitCode.USAGE
    assert said in capsys.readouterr().err


def test_positive_int_says_what_is_wrong():
    assert positive_int("4") == 4
    with pytest.raises(argparse.ArgumentTypeError, match="'0': at least 1"):
        positive_int("0")
    with pytest.raises(argparse.ArgumentTypeError, match="not a whole number"):
        positive_int("1.5")


def test_the_restore_progress_is_silent_with_quiet():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    args = argparse.Namespace(quiet=True)
    runtime = restore.Runtime(args=args, config=None, out=io.StringIO(), err=Terminal())  # type: ignore[arg-type]
    assert type(runtime.progress()).__name__ == "NoProgress"
