"""`backup-agent COMMAND --config FILE`: the operator's entry point.

Exit codes (one place): 0 ok, 1 failure at run time, 2 usage or configuration error,
3 backup volume not ready.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import structlog

from agent import __version__, logs
from agent.config import Config, environment_problems, load_config, resolve_config_path
from agent.errors import BackupAgentError, ConfigError, VolumeNotReady

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2
EXIT_VOLUME = 3

log = structlog.get_logger("agent.cli")

Command = Callable[[argparse.Namespace, Config], int]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return EXIT_CONFIG
    path = resolve_config_path(args.config)
    try:
        config = load_config(path)
    except ConfigError as exc:
        _print_problems(path, exc.problems)
        return EXIT_CONFIG
    logs.configure(config.logging.level, config.logging.format)
    args.config_path = path
    try:
        result: int = args.handler(args, config)
        return result
    except VolumeNotReady as exc:
        print(f"backup-agent: backup volume not ready: {exc}", file=sys.stderr)
        return EXIT_VOLUME
    except ConfigError as exc:
        _print_problems(path, exc.problems)
        return EXIT_CONFIG
    except BackupAgentError as exc:
        print(f"backup-agent: {exc}", file=sys.stderr)
        return EXIT_FAILURE


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="backup-agent", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"backup-agent {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    def command(name: str, handler: Command, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument(
            "--config",
            metavar="FILE",
            help="default: $BACKUP_AGENT_CONFIG, then /etc/backup-agent/config.yaml",
        )
        sub.set_defaults(handler=handler)
        return sub

    command("run", cmd_run, "Run the agent in the foreground (what systemd starts).")
    command("check-config", cmd_check_config, "Validate the configuration; exit 0 or 2.")
    init = command("init-volume", cmd_init_volume, "Mark the backup root as a backup volume.")
    init.add_argument("--volume-id", help="an id to record (default: a new random id)")
    snap = command("snapshot", cmd_snapshot, "Take an EBS snapshot of the backup volume now.")
    snap.add_argument(
        "--dry-run", action="store_true", help="show the volume, tags and retention; change nothing"
    )
    return parser


def cmd_run(args: argparse.Namespace, config: Config) -> int:
    from agent.aws import build_clients
    from agent.daemon import Daemon

    return Daemon(config, build_clients(config), config_path=args.config_path).run()


def cmd_check_config(args: argparse.Namespace, config: Config) -> int:
    problems = environment_problems(config)
    if problems:
        _print_problems(args.config_path, problems)
        return EXIT_CONFIG
    print(f"{args.config_path}: OK")
    return EXIT_OK


def cmd_init_volume(args: argparse.Namespace, config: Config) -> int:
    from agent.store import Volume

    marker = Volume(config.storage.root).initialise(args.volume_id)
    print(f"{config.storage.root}: backup volume {marker.volume_id}")
    return EXIT_OK


def cmd_snapshot(args: argparse.Namespace, config: Config) -> int:
    from agent.aws import build_clients
    from agent.snapshots import build_snapshot_manager, describe_run
    from agent.store import Volume

    Volume(config.storage.root).read_marker()  # never snapshot an unmounted root
    run = build_snapshot_manager(config, build_clients(config)).take(dry_run=args.dry_run)
    describe_run(run)
    return EXIT_OK if run.ok else EXIT_FAILURE


def _print_problems(path: Path, problems: list[str]) -> None:
    print(f"{path}: invalid configuration", file=sys.stderr)
    for problem in problems:
        print(f"  {problem}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
