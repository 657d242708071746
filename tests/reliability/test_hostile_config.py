"""Hostile configuration and installation (issue 16): a backup root that would hand the
agent a system directory, a config file built to crash the loader, an install run into
planted symlinks, and values that would smuggle directives into the systemd unit.

Each is refused with a clear reason naming the key (exit 2), never followed or obeyed.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from agent.cli.agent import main as cli_main
from agent.config import parse_config
from agent.errors import ConfigError

VALID = {
    "queue": {"url": "https://sqs.us-east-1.amazonaws.com/123456789012/q"},
    "buckets": ["company-documents"],
    "storage": {"root": "/mnt/backups"},
    "state": {"table": "backup-agent-objects"},
}


def _problems(raw: object) -> list[str]:
    with pytest.raises(ConfigError) as raised:
        parse_config(raw)
    return raised.value.problems


def _with_root(root: str | Path) -> dict:
    return {**VALID, "storage": {"root": str(root)}}


def _check_config(path: Path, capsys) -> tuple[int, str]:
    code = cli_main(["check-config", "--config", str(path)])
    return code, capsys.readouterr().err


# -- item 4: the backup root ------------------------------------------------------------------

SYSTEM_ROOTS = [
    "/",
    "/etc",
    "/usr",
    "/var",
    "/home",
    "/root",
    "/boot",
    "/proc",
    "/sys",
    "/dev",
    "/run",
    "/tmp",
    "/etc/",  # the same directory, written differently
    "//usr",
    "/var/./",
]


@pytest.mark.parametrize("root", SYSTEM_ROOTS)
def test_a_system_directory_as_the_backup_root_is_a_config_error(root):
    problems = _problems(_with_root(root))
    assert len(problems) == 1 and problems[0].startswith("storage.root: "), problems
    assert "system directory" in problems[0]


@pytest.mark.parametrize("root", ["/var/backups", "/mnt/x", "/srv/backup-volume", "/tmp/x"])
def test_a_directory_below_a_system_directory_stays_fine(root):
    assert str(parse_config(_with_root(root)).storage.root) == root


def test_a_root_that_climbs_with_dotdot_is_a_config_error():
    problems = _problems(_with_root("/mnt/backups/../../etc"))
    assert problems == ["storage.root: /mnt/backups/../../etc must not contain '..'"]


def test_a_symlink_as_the_backup_root_is_a_config_error(tmp_path):
    target = tmp_path / "elsewhere"
    target.mkdir()
    link = tmp_path / "backups"
    link.symlink_to(target)
    problems = _problems(_with_root(link))
    assert problems == [
        f"storage.root: {link} is a symbolic link (to {target}); give the real directory"
    ]


def test_a_path_through_a_symlink_into_a_system_directory_is_a_config_error(tmp_path):
    (tmp_path / "up").symlink_to("/")
    problems = _problems(_with_root(tmp_path / "up" / "etc"))
    assert len(problems) == 1 and "system directory /etc" in problems[0], problems


@pytest.mark.parametrize(
    "root",
    [
        "/mnt/back\nups",
        "/mnt/x\nExecStartPre=/bin/sh -c id",
        "/mnt/\x1b[2Jcleared",
        "/mnt/tab\there",
        "/mnt/nul\x00byte",
        "/mnt/\u202eevil",
        "/mnt/del\x7f",
        "/mnt/c1\x9bcsi",
    ],
    ids=["newline", "directive", "escape", "tab", "nul", "rtl-override", "del", "c1"],
)
def test_a_root_with_control_characters_is_a_config_error_shown_escaped(root, tmp_path, capsys):
    problems = _problems(_with_root(root))
    assert len(problems) == 1 and problems[0].startswith("storage.root: "), problems
    assert "control character" in problems[0]
    assert problems[0].isprintable(), problems[0]  # the path is shown escaped

    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(_with_root(root)), encoding="utf-8")
    code, err = _check_config(path, capsys)
    assert code == 2
    assert "storage.root" in err and "\x1b" not in err and "\x9b" not in err
