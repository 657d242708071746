"""Hostile configuration, installation and terminal (issue 16, items 4, 8, 10 and 11): a
backup root that would hand the agent a system directory, a config file built to crash the
loader, an install run into planted symlinks or with values that would smuggle directives
into the systemd unit, keys and messages built to drive the operator's terminal, snapshot
ids built to become paths, a link planted for the rejected-config alert's state, and an
install that must be the locked, hash-checked set.

Each is refused with a clear reason naming the key (exit 2), shown escaped, never followed
or obeyed. The attacks failed on the code before issue 16's fixes (docs/reliability.md
says what each did then); what passed already are the cases that must stay accepted and a
few values that were refused before.
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


def _dropins(prefix: Path, *, grow: bool = False) -> str:
    """The agent's unit files as installed; with `grow`, the root-owned grow units only
    (backup-agent-grow.path/.service: `User=root` is theirs by design, issue 17)."""
    unit_dir = prefix / "etc/systemd/system"
    return "".join(
        p.read_text()
        for p in sorted(unit_dir.rglob("*"))
        if p.is_file() and p.name.startswith("backup-agent-grow.") == grow
    )


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
    grow_units = _dropins(tmp_path, grow=True)
    assert "ExecStartPre" not in grow_units and "/mnt/x" not in grow_units, grow_units
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


# -- item 8: config files built to crash the loader -------------------------------------------

HEADER = """\
queue: {url: "https://sqs.us-east-1.amazonaws.com/123456789012/q"}
buckets: [company-documents]
storage: {root: /mnt/backups}
state: {table: backup-agent-objects}
"""


def _bomb(levels: int, key: str) -> str:
    """A YAML 'billion laughs': 9 ** levels strings from a few hundred bytes of aliases."""
    lines = ["l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for n in range(1, levels):
        lines.append(f"l{n}: &l{n} [" + ", ".join([f"*l{n - 1}"] * 9) + "]")
    lines.append(f"{key}: *l{levels - 1}")
    return "\n".join(lines) + "\n"


CRASHERS = [
    # (id, text after the valid header, what the single problem line must say)
    ("nested-list", "alerts: " + "[" * 50_000 + "]" * 50_000, "alerts.0.0.0…: nested deeper"),
    ("nested-map", "consumer: " + "{a: " * 2_000 + "1" + "}" * 2_000, "consumer.a.a.a…: nested"),
    (
        "long-int",
        "reconcile: {checkpoint_every: " + "9" * 5_000 + "}",
        "reconcile.checkpoint_every",
    ),
    ("bad-date", "snapshots: {tags: {when: 2024-02-30}}", "snapshots.tags.when"),
    (
        "drain-int",
        "consumer: {drain_timeout: 100000000}",
        "consumer.drain_timeout: '1157d9h46m40s' is longer than 1h",
    ),
    (
        "drain-years",
        "consumer: {drain_timeout: 1000000000000}",
        "consumer.drain_timeout: '11574074d1h46m40s' is longer than 100 years",
    ),
    ("drain-float", "consumer: {drain_timeout: 1.0e+308}", "consumer.drain_timeout: "),
    ("drain-1e308", "consumer: {drain_timeout: 1e308}", "consumer.drain_timeout: "),
    ("overflow-d", "gc: {grace_period: 99999999999999999999d}", "gc.grace_period: "),
    ("grace-huge", "gc: {grace_period: 99999w}", "gc.grace_period: "),
    ("keep-huge", "retention: {keep_younger_than: 9999999w}", "retention.keep_younger_than: "),
    ("schedule-huge", "gc: {schedule: 9999999w}", "gc.schedule: "),
    ("rate-inf", "reconcile: {objects_per_second: .inf}", "reconcile.objects_per_second: "),
    ("rate-huge", "reconcile: {objects_per_second: 1.0e+300}", "reconcile.objects_per_second"),
    ("checkpoint", "reconcile: {checkpoint_every: 10000000000000000000}", "checkpoint_every: "),
    ("window", "alerts: {window_seconds: 1.0e+308}", "alerts.window_seconds: "),
    ("deleted-days", "retention: {keep_deleted_days: 1.0e+308}", "retention.keep_deleted_days"),
    ("keep-last", "retention: {keep_last_versions: 99999999999999999999}", "keep_last_versions"),
    ("cycle", "scrub: {cycle_days: 1.0e+308}", "scrub.cycle_days: "),
    ("no-backup", "alarms: {no_backup_hours: 1.0e+308}", "alarms.no_backup_hours: "),
    ("period", "alarms: {period_seconds: 99999999999}", "alarms.period_seconds: "),
    ("dlq", "alarms: {dead_letter_messages: 99999999999999}", "alarms.dead_letter_messages: "),
    ("failed", "alarms: {failed_backups: 99999999999999}", "alarms.failed_backups: "),
    ("buffer", "metrics: {buffer_size: 99999999999999}", "metrics.buffer_size: "),
    ("free", "storage: {root: /mnt/b, min_free_bytes: 1.0e+300}", "storage.min_free_bytes: "),
    ("in-flight", "consumer: {max_bytes_in_flight: 99999999999999999999}", "max_bytes_in_flight"),
    ("retry-base", "queue: {url: 'https://q/1/q', retry_base_seconds: .inf}", "retry_base_seconds"),
]


@pytest.mark.parametrize(
    ("text", "expected"), [c[1:] for c in CRASHERS], ids=[c[0] for c in CRASHERS]
)
def test_a_value_built_to_crash_or_overflow_is_a_config_error_naming_the_key(
    tmp_path, capsys, text, expected
):
    path = tmp_path / "config.yaml"
    body = HEADER
    section = text.split(":", 1)[0]
    body = "\n".join(line for line in HEADER.splitlines() if not line.startswith(section + ":"))
    path.write_text(body + "\n" + text + "\n", encoding="utf-8")

    code, err = _check_config(path, capsys)

    assert code == 2, err
    assert expected in err, err
    assert "Traceback" not in err and len(err) < 2_000, err


DUPLICATES = [
    (
        "top",
        HEADER + "buckets: [someone-elses-bucket]\n",
        "buckets: duplicate key at line 5 (first at line 2)",
    ),
    (
        "nested",
        HEADER.replace("{root: /mnt/backups}", "{root: /mnt/backups, root: /etc/x}"),
        "storage.root: duplicate key at line 3 (first at line 3)",
    ),
    (
        "block",
        HEADER + "consumer:\n  workers: 4\n  drain_timeout: 30s\n  workers: 64\n",
        "consumer.workers: duplicate key at line 8 (first at line 6)",
    ),
    (
        "bool-twins",
        HEADER + "snapshots: {tags: {yes: a, true: b}}\n",
        "snapshots.tags.true: duplicate",
    ),
    ("int-twins", HEADER + "schedules: {1: 6h, 0x1: 7h}\n", "schedules.0x1: duplicate key"),
]


@pytest.mark.parametrize(
    ("text", "expected"), [d[1:] for d in DUPLICATES], ids=[d[0] for d in DUPLICATES]
)
def test_a_duplicate_key_is_a_config_error_not_a_silent_last_wins(tmp_path, capsys, text, expected):
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")

    code, err = _check_config(path, capsys)

    assert code == 2 and expected in err, err


def test_a_merge_key_may_still_override_what_it_merges(tmp_path, capsys):
    root = tmp_path / "backups"
    root.mkdir()
    path = tmp_path / "config.yaml"
    path.write_text(
        HEADER.replace("/mnt/backups", str(root))
        + "defaults: &d {workers: 4, drain_timeout: 30s}\n".replace("defaults", "x-defaults")
        + "consumer: {<<: *d, workers: 8}\n",
        encoding="utf-8",
    )
    code, err = _check_config(path, capsys)
    assert code == 2 and "x-defaults: unknown key" in err  # the anchor's own key is refused…
    assert "duplicate" not in err  # …but overriding a merged key is not a duplicate


def test_a_yaml_alias_bomb_is_refused_in_milliseconds_within_bounded_memory(tmp_path):
    """9 ** 9 = 387 million strings: run in a child with a 1 GiB address-space cap, so the
    code before the fix (which printed the expanded value in its error) fails, not the box."""
    import subprocess
    import sys
    import textwrap

    path = tmp_path / "config.yaml"
    path.write_text(HEADER + _bomb(9, "gc: {schedule") + "}\n", encoding="utf-8")
    script = textwrap.dedent(
        f"""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
        from agent.cli.agent import main
        sys.exit(main(["check-config", "--config", {str(path)!r}]))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 2, result.stderr[-2_000:]
    assert "more than" in result.stderr and "alias" in result.stderr, result.stderr[-2_000:]
    assert len(result.stderr) < 2_000


def test_a_config_file_of_many_megabytes_is_refused_unread(tmp_path, capsys):
    path = tmp_path / "config.yaml"
    path.write_text(HEADER + "# " + "x" * (8 << 20) + "\n", encoding="utf-8")
    code, err = _check_config(path, capsys)
    assert code == 2 and "larger than" in err, err


def test_any_exception_while_validating_becomes_a_config_error_naming_the_key(
    tmp_path, capsys, monkeypatch
):
    def crash(root):
        raise OverflowError("something nobody thought of")

    monkeypatch.setattr("agent.config.safe_backup_root", crash)  # storage.root's validator
    path = tmp_path / "config.yaml"
    path.write_text(HEADER, encoding="utf-8")

    code, err = _check_config(path, capsys)

    assert code == 2, err
    assert "storage.root: cannot be read (OverflowError: something nobody thought of)" in err


# -- item 10: what the CLIs print for a person goes through one sanitiser -------------------

ESCAPES = "\x1b]0;owned\x07\x1b[2J\x9b31m\u202e"  # set the title, clear, C1 CSI, RTL override


IN_XML = "\x9b31m\u202e"  # what an EC2 (XML) answer can carry: a C1 CSI, an RTL override


def _shown_safely(text: str) -> bool:
    return all(c.isprintable() or c == "\n" for c in text)


def _good_config(tmp_path: Path, **extra: object) -> Path:
    root = tmp_path / "backups"
    root.mkdir(exist_ok=True)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({**_with_root(root), **extra}), encoding="utf-8")
    return path


def _both_clis(argv_agent: list[str], argv_restore: list[str], capsys) -> list[tuple[int, str]]:
    from agent.cli.restore import main as restore_main

    results = []
    results.append((cli_main(argv_agent), "".join(capsys.readouterr())))
    results.append((restore_main(argv_restore), "".join(capsys.readouterr())))
    return results


def test_a_config_key_holding_terminal_escapes_is_printed_escaped(tmp_path, capsys):
    path = _good_config(tmp_path, **{f"evil{ESCAPES}": 1})
    for code, printed in _both_clis(
        ["check-config", "--config", str(path)], ["list", "--config", str(path)], capsys
    ):
        assert code == 2
        assert "unknown key" in printed and "\\x1b]0;owned\\x07" in printed, printed
        assert _shown_safely(printed), printed


def test_a_config_path_holding_terminal_escapes_is_printed_escaped(tmp_path, capsys):
    path = tmp_path / f"missing{ESCAPES}.yaml"
    for code, printed in _both_clis(
        ["check-config", "--config", str(path)], ["list", "--config", str(path)], capsys
    ):
        assert code == 2 and "no such file" in printed
        assert _shown_safely(printed), printed


def test_exception_text_holding_terminal_escapes_is_printed_escaped(tmp_path, capsys):
    path = _good_config(tmp_path)
    evil_root = str(tmp_path / f"mnt{ESCAPES}")
    for code, printed in _both_clis(
        ["reindex", "--config", str(path), "--root", evil_root],
        ["list", "--config", str(path), "--offline", "--root", evil_root],
        capsys,
    ):
        assert code == 3 and "not ready" in printed, printed
        assert _shown_safely(printed), printed


def test_snapshot_tags_holding_terminal_escapes_are_printed_escaped():
    import io
    from datetime import UTC, datetime

    from agent.cli.output import describe_run, print_snapshots
    from agent.snapshots.records import Snapshot, SnapshotRun

    out = io.StringIO()
    snap = Snapshot(
        snapshot_id="snap-0123456789abcdef0",
        volume_id="vol-0123456789abcdef0",
        region="us-east-1",
        state="completed",
        progress="100%",
        taken_at=datetime(2026, 1, 1, tzinfo=UTC),
        journal_position=f"j{ESCAPES}",
    )
    print_snapshots([snap], out=out, now=datetime(2026, 1, 2, tzinfo=UTC))
    run = SnapshotRun(
        state="dry-run",
        volume_id="vol-0123456789abcdef0",
        flush="sync",
        tags={f"k{ESCAPES}": f"v{ESCAPES}"},
    )
    describe_run(run, out=out)
    assert "\\x1b" in out.getvalue()
    assert _shown_safely(out.getvalue()), out.getvalue()


def test_the_mount_snapshot_plan_shows_hostile_tags_escaped(monkeypatch, capsys):
    from agent.cli.mount_snapshot import main as mount_main
    from agent.snapshots.records import JOURNAL_TAG, MANAGED_TAG, VOLUME_TAG, tag_list
    from tests.support.snapshots import moto_ec2

    with moto_ec2(monkeypatch) as ec2:
        instance = ec2.run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1)["Instances"][
            0
        ]["InstanceId"]
        source = ec2.create_volume(AvailabilityZone="us-east-1a", Size=1)["VolumeId"]
        snapshot = ec2.create_snapshot(
            VolumeId=source,
            TagSpecifications=[
                {
                    "ResourceType": "snapshot",
                    "Tags": tag_list(
                        {MANAGED_TAG: "true", VOLUME_TAG: source, JOURNAL_TAG: f"x{IN_XML}"}
                    ),
                }
            ],
        )["SnapshotId"]
        code = mount_main([snapshot, "--instance-id", instance, "--dry-run"], ec2=ec2)

    printed = "".join(capsys.readouterr())
    assert code == 0 and "journal position at the snapshot: x\\x9b31m\\u202e" in printed, printed
    assert _shown_safely(printed), printed


# -- item 10: mount-snapshot takes only snapshot ids and mounts without exec, suid, devices --


@pytest.mark.parametrize(
    "snapshot_id",
    [
        "../../etc",
        "snap-0123/../../../etc",
        "snap-0123456789abcdef0\n",
        "snap-XYZ",
        "snap-",
        "snap-0123456789abcdef01",  # 18 digits
        "vol-0123456789abcdef0",
        "-o",
    ],
)
def test_mount_snapshot_refuses_anything_but_a_snapshot_id_before_any_call(
    tmp_path, capsys, snapshot_id
):
    from agent.cli.mount_snapshot import main as mount_main

    class NoCalls:
        def __getattr__(self, name):
            raise AssertionError(f"EC2 {name} called for {snapshot_id!r}")

    code = mount_main(
        ["--mount-root", str(tmp_path), "--instance-id", "i-1", "--", snapshot_id], ec2=NoCalls()
    )

    err = capsys.readouterr().err
    assert code == 2 and "is not a snapshot id" in err, err
    assert list(tmp_path.iterdir()) == []


def test_mount_snapshot_mounts_read_only_nosuid_nodev_noexec(tmp_path):
    import subprocess

    from agent.snapshots.mount import MountPlan, SnapshotMounter

    commands = []

    def run(command, **_):
        commands.append(command)
        return subprocess.CompletedProcess(
            command, 0, "ext4\n" if command[0] == "blkid" else "", ""
        )

    dev_root = tmp_path / "dev"
    dev_root.mkdir()
    (dev_root / "xvdg").touch()
    plan = MountPlan(
        snapshot_id="snap-0123456789abcdef0",
        source_volume_id="vol-0aaa",
        taken_at="-",
        journal_position="-",
        size_gib=1,
        instance_id="i-1",
        availability_zone="us-east-1a",
        device="/dev/sdg",
        mount_point=tmp_path / "mnt" / "snapshot-snap-0123456789abcdef0",
        volume_type="gp3",
    )
    SnapshotMounter(None, run=run, sys_root=tmp_path / "sys", dev_root=dev_root).mount(
        plan, "vol-0123456789abcdef0"
    )
    mount = commands[-1]
    assert mount[:2] == ["mount", "-o"]
    assert set(mount[2].split(",")) == {"ro", "nosuid", "nodev", "noexec"}


def test_mount_snapshot_never_mounts_over_a_planted_symlink(tmp_path):
    from agent.errors import BackupAgentError
    from agent.snapshots.mount import MountPlan, SnapshotMounter

    victim = tmp_path / "etc"
    victim.mkdir()
    (tmp_path / "mnt").mkdir()
    point = tmp_path / "mnt" / "snapshot-snap-0123456789abcdef0"
    point.symlink_to(victim)
    dev_root = tmp_path / "dev"
    dev_root.mkdir()
    (dev_root / "xvdg").touch()
    commands = []

    def run(command, **_):
        import subprocess

        commands.append(command)
        return subprocess.CompletedProcess(command, 0, "", "")

    plan = MountPlan(
        snapshot_id="snap-0123456789abcdef0",
        source_volume_id="vol-0aaa",
        taken_at="-",
        journal_position="-",
        size_gib=1,
        instance_id="i-1",
        availability_zone="us-east-1a",
        device="/dev/sdg",
        mount_point=point,
        volume_type="gp3",
    )
    with pytest.raises(BackupAgentError, match="symbolic link"):
        SnapshotMounter(None, run=run, sys_root=tmp_path / "sys", dev_root=dev_root).mount(
            plan, "vol-0123456789abcdef0"
        )
    assert not any(c[0] == "mount" for c in commands)


# -- item 10: the rejected-config alert's dedup state never lives at a fixed name in /tmp ----

STATE_NAME = "backup-agent-config-rejected.json"


@pytest.fixture
def rejected(aws, tmp_path, monkeypatch):
    """A config whose alerts go to an SNS topic (moto), a fake /tmp, and no state directory."""
    import json
    import tempfile

    arn = aws.session.client("sns").create_topic(Name="backup-alerts")["TopicArn"]
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps({"alerts": {"sns_topic_arn": arn}, "queue": {"url": "x"}}))
    fake_tmp = tmp_path / "tmp"
    fake_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(fake_tmp))
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg-state"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))

    def report(**kwargs):
        from agent.cli.rejected_config import report_rejected_config

        return report_rejected_config(
            path, ["queue.url: 'x' is not a queue URL"], clients=aws, **kwargs
        )

    return report, fake_tmp


def test_the_dedup_state_is_never_written_through_a_link_planted_in_tmp(rejected, tmp_path):
    report, fake_tmp = rejected
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (fake_tmp / STATE_NAME).symlink_to(victim)

    assert report() is True
    assert report() is False  # deduplicated: the state was kept, just not in /tmp

    assert victim.read_text() == "precious"
    state_dir = tmp_path / "xdg-state" / "backup-agent"
    assert (state_dir / STATE_NAME).is_file()
    assert oct(state_dir.stat().st_mode & 0o777) == "0o700"


def test_without_xdg_state_home_the_state_goes_under_the_users_home(
    rejected, tmp_path, monkeypatch
):
    report, fake_tmp = rejected
    monkeypatch.delenv("XDG_STATE_HOME")
    assert report() is True
    state_dir = tmp_path / "home" / ".local" / "state" / "backup-agent"
    assert (state_dir / STATE_NAME).is_file()
    assert oct(state_dir.stat().st_mode & 0o777) == "0o700"
    assert list(fake_tmp.iterdir()) == []


def test_a_planted_symlink_as_the_state_directory_or_file_is_never_followed(rejected, tmp_path):
    report, _ = rejected
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "xdg-state").mkdir()
    (tmp_path / "xdg-state" / "backup-agent").symlink_to(elsewhere)

    assert report() is True  # the alert still goes out; only its dedup state is not kept
    assert list(elsewhere.iterdir()) == []

    (tmp_path / "xdg-state" / "backup-agent").unlink()
    (tmp_path / "xdg-state" / "backup-agent").mkdir(mode=0o700)
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (tmp_path / "xdg-state" / "backup-agent" / STATE_NAME).symlink_to(victim)
    assert report() is True
    assert victim.read_text() == "precious"


def test_under_systemd_the_state_lives_in_its_state_directory(rejected, tmp_path, monkeypatch):
    report, fake_tmp = rejected
    state = tmp_path / "var-lib-backup-agent"
    state.mkdir(mode=0o750)
    monkeypatch.setenv("STATE_DIRECTORY", str(state))
    assert report() is True and report() is False
    assert (state / STATE_NAME).is_file()
    assert list(fake_tmp.iterdir()) == []
    unit = (Path(__file__).resolve().parents[2] / "systemd/backup-agent.service").read_text()
    assert "\nStateDirectory=backup-agent\n" in unit


# -- item 11: a production install is the locked, hash-checked set ----------------------------

LOCK = Path(__file__).resolve().parents[2] / "requirements.lock"
PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def _locked() -> dict[str, tuple[str, list[str]]]:
    """name -> (pinned version, hashes) from requirements.lock."""
    import re

    from packaging.utils import canonicalize_name

    pins: dict[str, tuple[str, list[str]]] = {}
    text = LOCK.read_text(encoding="utf-8").replace("\\\n", " ")
    for line in text.splitlines():
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        match = re.match(r"([A-Za-z0-9._-]+)==(\S+)((?:\s+--hash=sha256:[0-9a-f]{64})*)\s*$", line)
        assert match, f"not a pinned, hashed requirement: {line!r}"
        hashes = re.findall(r"sha256:([0-9a-f]{64})", match.group(3))
        pins[canonicalize_name(match.group(1))] = (match.group(2), hashes)
    return pins


def test_the_lock_pins_every_runtime_and_build_dependency_with_hashes():
    import tomllib

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    project = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))
    wanted = [Requirement(r) for r in project["project"]["dependencies"]]
    wanted += [Requirement(r) for r in project["build-system"]["requires"]]
    pins = _locked()

    for requirement in wanted:
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement} is not in requirements.lock: run make lock"
        version, hashes = pins[name]
        assert requirement.specifier.contains(version, prereleases=True), (requirement, version)
        assert hashes, f"{name}=={version} has no hash"
    assert all(hashes for _version, hashes in pins.values())
    assert "make lock" in LOCK.read_text()


FAKE_VENV_PYTHON = """#!/bin/sh
[ "$1" = - ] && exit 1  # storage_root: no agent package here, so the default root
echo "$*" >>LOG
"""
FAKE_AGENT = """#!/bin/sh
[ "$1" = --version ] && echo backup-agent 0 && exit 0
exit 1
"""
FAKE_PYTHON = """#!/bin/sh
# the interpreter install.sh is given: passes the version check, makes a fake venv
case "$1" in
    -c) exit 0 ;;
    -m) [ "$2" = venv ] || exit 1
        mkdir -p "$3/bin"
        for name in python backup-agent backup-restore backup-bootstrap-aws \\
            backup-mount-snapshot; do cp STUBS/backup-agent "$3/bin/$name"; done
        cp STUBS/python "$3/bin/python" ;;
esac
"""


def test_install_sh_installs_the_lock_with_hashes_then_the_package_without_dependencies(
    tmp_path,
):
    """A fake interpreter records what install.sh asks pip to do in a new virtualenv."""
    import subprocess

    log = tmp_path / "pip.log"
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    for name, text in (
        ("python", FAKE_VENV_PYTHON.replace("LOG", str(log))),
        ("backup-agent", FAKE_AGENT),
        ("python3.99", FAKE_PYTHON.replace("STUBS", str(stubs))),
    ):
        (stubs / name).write_text(text)
        (stubs / name).chmod(0o755)
    prefix = tmp_path / "prefix"
    prefix.mkdir()

    result = subprocess.run(
        ["sh", str(INSTALL), "--prefix", str(prefix), "--python", str(stubs / "python3.99")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    pip = [line.split() for line in log.read_text().splitlines()]
    assert all(words[:3] == ["-m", "pip", "install"] for words in pip), pip
    first, *rest = pip
    assert "--require-hashes" in first and ["-r", str(LOCK)] == first[-2:], first
    assert len(rest) == 1, pip  # no unpinned `pip install --upgrade pip` or the like
    package = rest[0]
    assert package[-1] == str(LOCK.parent) and "--no-deps" in package, package
    assert "--no-build-isolation" in package, package  # setuptools/wheel come from the lock


def test_make_lock_regenerates_the_lock_with_hashes():
    makefile = (LOCK.parent / "Makefile").read_text()
    assert "\nlock:" in makefile
    recipe = makefile.split("\nlock:", 1)[1].split("\n\n", 1)[0]
    assert "pip-compile" in recipe and "--generate-hashes" in recipe
    assert "requirements.lock" in recipe or "$(LOCK)" in recipe
