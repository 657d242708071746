"""`backup-bootstrap-aws --config FILE [--create-buckets] [--dry-run]`: create what the agent
needs.

See agent/operations/bootstrap.py for what is created; this is its command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence

from agent import logs
from agent.aws import build_clients
from agent.cli.common import (
    ExitCode,
    HelpFormatter,
    add_global_options,
    examples,
    guarded,
    log_level,
    print_json,
    print_problems,
)
from agent.cli.output import printable_key
from agent.config import load_config, resolve_config_path
from agent.errors import ConfigError
from agent.operations.bootstrap import Bootstrap


def main(argv: Sequence[str] | None = None) -> int:
    return guarded("bootstrap-aws", lambda: _main(argv))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bootstrap-aws",
        description="Create the queue, DLQ, notifications, table and topic (idempotent).",
        formatter_class=HelpFormatter,
        epilog=examples(
            "backup-bootstrap-aws --config /etc/backup-agent/config.yaml --dry-run",
            "backup-bootstrap-aws --config /etc/backup-agent/config.yaml",
            "backup-bootstrap-aws --create-buckets --json",
        ),
    )
    add_global_options(parser, top=True)
    parser.add_argument(
        "--create-buckets",
        action="store_true",
        help="also create the configured buckets (demos and tests)",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="only read: print what would be created or changed, create nothing",
    )
    return parser


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    path = resolve_config_path(args.config)
    try:
        config = load_config(path)
    except ConfigError as exc:
        print_problems(sys.stderr, f"{path}: invalid configuration", exc.problems)
        return ExitCode.USAGE
    logs.configure(log_level(args, config.logging.level), config.logging.format)
    bootstrap = Bootstrap(config, build_clients(config), dry_run=args.dry_run)
    try:
        report = bootstrap.run(create_buckets=args.create_buckets)
    except ConfigError as exc:
        print_problems(sys.stderr, f"{path}: configuration problem", exc.problems)
        return ExitCode.USAGE
    if args.json:
        print_json(dataclasses.asdict(report))
        return ExitCode.OK
    verb, width = ("would create", 13) if args.dry_run else ("created", 9)
    for what in report.created:
        print(f"{verb:<{width}}{printable_key(what)}")
    if not args.quiet:
        for what in report.existing:
            print(f"{'exists':<{width}}{printable_key(what)}")
    if args.dry_run:
        print("dry run: nothing created or changed")
    return ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
