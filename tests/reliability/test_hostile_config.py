"""Hostile configuration and installation (issue 16): a backup root that would hand the
agent a system directory, a config file built to crash the loader, an install run into
planted symlinks, and values that would smuggle directives into the systemd unit.

Each is refused with a clear reason naming the key (exit 2), never followed or obeyed.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from agent.cli.agent import main as cli_main
from agent.config import parse_config
from agent.errors import ConfigError
from agent.storage.volume import MARKER_NAME, Volume
from tests.functional.test_install_script import INSTALL, _install, _operator_config
from tests.reliability.test_volume_faults import small_filesystem

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


def _init_volume(tmp_path: Path, root: Path, capsys, *extra: str) -> tuple[int, str, str]:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(_with_root(root)), encoding="utf-8")
    code = cli_main(["init-volume", "--config", str(path), *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_init_volume_refuses_a_directory_that_already_holds_files(tmp_path, capsys):
    root = tmp_path / "home-of-someone"
    root.mkdir()
    (root / "thesis.tex").write_text("years of work")

    code, _out, err = _init_volume(tmp_path, root, capsys)

    assert code == 3
    assert f"{root} is not empty and not a mount point" in err and "--force" in err
    assert sorted(p.name for p in root.iterdir()) == ["thesis.tex"]  # nothing written


def test_init_volume_with_force_marks_a_non_empty_directory_and_says_so_loudly(tmp_path, capsys):
    root = tmp_path / "reused"
    root.mkdir()
    (root / "old.txt").write_text("x")

    code, out, err = _init_volume(tmp_path, root, capsys, "--force", "--volume-id", "vol-forced")

    assert code == 0
    assert (root / MARKER_NAME).is_file() and (root / "old.txt").read_text() == "x"
    assert "WARNING" in err and "--force" in err and "not empty" in err
    assert f"{root}: backup volume vol-forced" in out


def test_init_volume_takes_an_empty_directory(tmp_path, capsys):
    root = tmp_path / "fresh"
    root.mkdir()
    code, _out, err = _init_volume(tmp_path, root, capsys)
    assert code == 0 and err == ""
    assert (root / MARKER_NAME).is_file()


def test_init_volume_takes_a_dedicated_mount_point_that_is_not_empty(tmp_path, capsys):
    root = tmp_path / "ebs"
    root.mkdir()
    with small_filesystem(root, "4m"):
        (root / "lost+found").mkdir()
        code, _out, err = _init_volume(tmp_path, root, capsys)
        assert code == 0, err
        assert (root / MARKER_NAME).is_file()


def test_init_volume_again_keeps_the_marker_without_force(tmp_path, capsys):
    root = tmp_path / "fresh"
    root.mkdir()
    assert _init_volume(tmp_path, root, capsys, "--volume-id", "vol-first")[0] == 0
    code, out, _err = _init_volume(tmp_path, root, capsys, "--volume-id", "vol-second")
    assert code == 0 and "vol-first" in out


def test_start_up_removes_only_the_volumes_own_temp_files(tmp_path):
    root = tmp_path / "backups"
    root.mkdir()
    volume = Volume(root)
    volume.initialise("vol-tmp")
    volume.open()
    own = [f"{os.urandom(16).hex()}.part" for _ in range(2)]
    for name in own:
        (volume.tmp_dir / name).write_bytes(b"half a copy")
    planted = {
        "operator-notes.txt": b"keep me",
        "abc.part": b"not a name the volume makes",
        f"{'A' * 32}.part": b"upper-case hex is not ours either",
        f"{'0' * 32}.part.bak": b"nor this",
    }
    for name, body in planted.items():
        (volume.tmp_dir / name).write_bytes(body)
    (volume.tmp_dir / "a-directory").mkdir()
    (volume.tmp_dir / "a-directory" / "inside").write_bytes(b"x")
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"elsewhere")
    (volume.tmp_dir / f"{'1' * 32}.part").symlink_to(outside)  # ours by name, a link: unlinked

    reopened = Volume(root)
    reopened.open()

    left = sorted(p.name for p in reopened.tmp_dir.iterdir())
    assert left == sorted([*planted, "a-directory"])
    assert reopened.temp_files_removed == 3
    assert outside.read_bytes() == b"elsewhere"
    assert (reopened.tmp_dir / "a-directory" / "inside").read_bytes() == b"x"


# -- item 4: install.sh follows no symlink and writes no value that could add a directive ----


def _dropins(prefix: Path) -> str:
    unit_dir = prefix / "etc/systemd/system"
    return "".join(p.read_text() for p in sorted(unit_dir.rglob("*")) if p.is_file())


@pytest.mark.parametrize(
    "root",
    ["/mnt/x\nExecStartPre=/bin/touch /tmp/pwned", "/mnt/x\n[Service]\nUser=root"],
    ids=["exec", "user"],
)
def test_a_newline_in_the_storage_root_adds_no_directive_to_the_unit(tmp_path, root):
    _operator_config(tmp_path, Path(root))  # yaml-quoted: the newline reaches the loader

    result = _install(tmp_path)

    units = _dropins(tmp_path)
    assert "ExecStartPre" not in units and "User=root" not in units, units
    assert "storage.root" in result.stderr  # check-config says what is wrong


@pytest.mark.parametrize("root", ["/mnt/my backups", "/mnt/100%n", "/mnt/quote'd", "/mnt/a\\b"])
def test_a_storage_root_systemd_would_split_or_expand_is_refused_by_install(tmp_path, root):
    _operator_config(tmp_path, Path(root))

    result = _install(tmp_path)

    assert result.returncode == 1
    assert "storage.root" in result.stderr and "cannot carry" in result.stderr
    assert "ReadWritePaths" not in _dropins(tmp_path).split("[Service]", 1)[-1].replace(
        "ReadWritePaths=/mnt/backups", ""
    )
    assert not (tmp_path / "etc/systemd/system/backup-agent.service.d").exists()


def test_a_prefix_with_a_newline_is_refused_before_anything_is_written(tmp_path):
    prefix = tmp_path / "p\nExecStartPre=true"
    prefix.mkdir()

    result = _install(prefix)

    assert result.returncode == 1
    assert "cannot carry" in result.stderr and "\nExecStartPre" not in result.stderr
    assert list(prefix.iterdir()) == []


def test_install_never_writes_through_a_planted_config_symlink(tmp_path):
    victim = tmp_path / "victim" / "shadow"
    victim.parent.mkdir()
    config = tmp_path / "etc/backup-agent/config.yaml"
    config.parent.mkdir(parents=True)
    config.symlink_to(victim)  # dangling: `[ -e ]` is false, `cp` would create the target

    result = _install(tmp_path)

    assert result.returncode == 1
    assert "symbolic link" in result.stderr
    assert not victim.exists()
    assert config.is_symlink()


def test_install_never_writes_a_dropin_through_a_planted_directory_symlink(tmp_path):
    root = tmp_path / "volume"
    root.mkdir()
    _operator_config(tmp_path, root)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    unit_dir = tmp_path / "etc/systemd/system"
    unit_dir.mkdir(parents=True)
    (unit_dir / "backup-agent.service.d").symlink_to(elsewhere)

    result = _install(tmp_path)

    assert result.returncode == 1 and "symbolic link" in result.stderr
    assert list(elsewhere.iterdir()) == []


def test_every_chown_in_install_sh_is_h_and_none_recursive():
    code = [line.split(" #")[0].strip() for line in INSTALL.read_text().splitlines()]
    calls = [line for line in code if "chown" in line.split() and not line.startswith("#")]
    assert calls, "install.sh changes ownership somewhere"
    for call in calls:
        words = call.split()
        assert "-h" in words, call
        assert not any(w.startswith("-") and "R" in w for w in words), call
