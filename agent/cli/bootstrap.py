"""`scripts/bootstrap-aws --config FILE [--create-buckets]`: create what the agent needs.

See agent/operations/bootstrap.py for what is created; this is its command line.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from agent.aws import build_clients
from agent.cli.common import ExitCode, guarded, print_problems
from agent.cli.output import printable_key
from agent.config import load_config, resolve_config_path
from agent.errors import ConfigError
from agent.operations.bootstrap import Bootstrap


def main(argv: Sequence[str] | None = None) -> int:
    return guarded("bootstrap-aws", lambda: _main(argv))


def _main(argv: Sequence[str] | None) -> int:
    parser = argparse.ArgumentParser(
        prog="bootstrap-aws",
        description="Create the queue, DLQ, notifications, table and topic (idempotent).",
    )
    parser.add_argument("--config", metavar="FILE")
    parser.add_argument(
        "--create-buckets",
        action="store_true",
        help="also create the configured buckets (demos and tests)",
    )
    args = parser.parse_args(argv)
    path = resolve_config_path(args.config)
    try:
        config = load_config(path)
    except ConfigError as exc:
        print_problems(sys.stderr, f"{path}: invalid configuration", exc.problems)
        return ExitCode.USAGE
    try:
        report = Bootstrap(config, build_clients(config)).run(create_buckets=args.create_buckets)
    except ConfigError as exc:
        print_problems(sys.stderr, f"{path}: configuration problem", exc.problems)
        return ExitCode.USAGE
    for what in report.created:
        print(f"created  {printable_key(what)}")
    for what in report.existing:
        print(f"exists   {printable_key(what)}")
    return ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
