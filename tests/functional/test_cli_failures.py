"""No traceback reaches a person: no credentials, no network, Ctrl-C and `| head` each end
every command-line tool with one line (none for a closed pipe) and their exit code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import botocore.exceptions
import pytest

from agent.cli import agent, bootstrap, mount_snapshot, restore
from agent.cli.common import ExitCode

VENV_BIN = Path(sys.executable).parent

# each tool, the module function its first step goes through, and a command line
TOOLS = [
    (agent.main, "agent.cli.agent.load_config", ["check-config"], "backup-agent"),
    (restore.main, "agent.cli.restore.load_config", ["list"], "backup-restore"),
    (bootstrap.main, "agent.cli.bootstrap.load_config", [], "bootstrap-aws"),
    (
        mount_snapshot.main,
        "agent.cli.mount_snapshot._clients",
        ["snap-0123456789abcdef0"],
        "mount-snapshot",
    ),
]
FAILURES = [
    (
        botocore.exceptions.NoCredentialsError(),
        ExitCode.AWS_UNAVAILABLE,
        "no usable AWS credentials",
    ),
    (
        botocore.exceptions.EndpointConnectionError(endpoint_url="https://sqs.example/"),
        ExitCode.AWS_UNAVAILABLE,
        'cannot reach AWS: Could not connect to the endpoint URL: "https://sqs.example/"',
    ),
    (KeyboardInterrupt(), ExitCode.INTERRUPTED, "interrupted"),
    (BrokenPipeError(), ExitCode.BROKEN_PIPE, None),
]


@pytest.mark.parametrize(("main", "target", "argv", "prog"), TOOLS, ids=[t[3] for t in TOOLS])
@pytest.mark.parametrize(
    ("error", "code", "line"), FAILURES, ids=[type(f[0]).__name__ for f in FAILURES]
)
def test_each_tool_turns_each_failure_into_one_line_and_its_code(
    main, target, argv, prog, error, code, line, monkeypatch, capsys
):
    def fail(*_args, **_kwargs):
        raise error

    monkeypatch.setattr(target, fail)

    assert main(argv) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [text for text in err.splitlines() if text.strip()]
    if line is None:
        assert lines == []  # `| head` closed it on purpose: nothing to say
    else:
        assert len(lines) == 1 and lines[0].startswith(f"{prog}: {line}"), lines


def test_other_exceptions_keep_their_traceback(monkeypatch):
    def fail(*_args, **_kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr("agent.cli.agent.load_config", fail)
    with pytest.raises(RuntimeError):
        agent.main(["check-config"])


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(
        "aws: {region: us-east-1}\n"
        'queue: {url: "https://sqs.us-east-1.amazonaws.com/123456789012/backup-events"}\n'
        "buckets: [company-documents]\n"
        f"storage: {{root: {tmp_path}}}\n"
        "state: {table: backup-agent-objects}\n"
    )
    return path


def test_a_closed_pipe_ends_quietly_with_141(tmp_path):
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first line, as after `| head -0`
    try:
        result = subprocess.run(
            [VENV_BIN / "backup-agent", "iam-policy", "--config", _config(tmp_path)],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write_end)
    assert (result.returncode, result.stderr) == (ExitCode.BROKEN_PIPE, "")


def test_no_credentials_on_a_real_command_is_one_line(tmp_path):
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    result = subprocess.run(
        [VENV_BIN / "backup-agent", "dashboard", "--config", _config(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == ExitCode.AWS_UNAVAILABLE
    assert result.stderr.startswith("backup-agent: no usable AWS credentials")
    assert len(result.stderr.splitlines()) == 1


# -- bad input is refused up front, with one line and exit 2 ---------------------------------


def _restore(argv, capsys) -> tuple[int, str, str]:
    code = restore.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def no_aws(monkeypatch):
    """Any client built fails the test: the check must come before AWS."""

    def refuse(*_args, **_kwargs):
        raise AssertionError("an AWS client was built")

    monkeypatch.setattr("agent.cli.restore.build_clients", refuse)


def test_an_unknown_source_bucket_is_refused_before_any_aws_call(tmp_path, capsys, no_aws):
    config = _config(tmp_path)
    for command in (["list"], ["verify"], ["restore", "--all", "--to", str(tmp_path / "r")]):
        code, out, err = _restore(
            [*command, "--config", str(config), "--source-bucket", "company-documentz"], capsys
        )
        assert code == ExitCode.USAGE, command
        assert out == ""
        assert err == (
            "backup-restore: --source-bucket company-documentz: not a configured bucket"
            " (the config's buckets: company-documents)\n"
        )


def test_a_to_that_is_not_a_directory_is_refused_up_front(tmp_path, capsys, no_aws):
    config = _config(tmp_path)
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    code, _out, err = _restore(
        ["restore", "--all", "--config", str(config), "--to", str(a_file / "restored")], capsys
    )
    assert code == ExitCode.USAGE
    assert err == f"backup-restore: --to {a_file}/restored: {a_file} is not a directory\n"


def test_a_to_this_user_cannot_write_is_refused_up_front(tmp_path, capsys, no_aws):
    config = _config(tmp_path)
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if os.access(locked, os.W_OK):
        pytest.skip("running as root: every directory is writable")
    code, _out, err = _restore(
        ["restore", "--all", "--config", str(config), "--to", str(locked / "a" / "b")], capsys
    )
    assert code == ExitCode.USAGE
    assert err == f"backup-restore: --to {locked}/a/b: {locked} is not writable by this user\n"


def test_snapshots_offline_reads_the_volume_record_and_never_builds_a_client(
    tmp_path, capsys, no_aws
):
    from agent.snapshots.records import append_record
    from agent.storage.volume import Volume

    config = _config(tmp_path)
    Volume(tmp_path).initialise("vol-test", force=True)
    taken = "2026-11-30T03:00:00+00:00"
    append_record(
        tmp_path,
        {"snapshot_id": "snap-1", "volume_id": "vol-0a", "region": "us-east-1",
         "state": "completed", "taken_at": taken, "journal_position": "2026-11-30:12",
         "copy_region": "eu-west-1", "copy_snapshot_id": "snap-1c"},
    )  # fmt: skip
    append_record(
        tmp_path,
        {"snapshot_id": "snap-0", "volume_id": "vol-0a", "region": "us-east-1",
         "state": "deleted", "taken_at": "2026-11-29T03:00:00+00:00"},
    )  # fmt: skip
    code, out, err = _restore(["--offline", "snapshots", "--config", str(config), "--json"], capsys)
    assert (code, err) == (ExitCode.OK, "")
    rows = [json.loads(line) for line in out.splitlines()]
    assert [(r["snapshot_id"], r["region"], r["state"]) for r in rows] == [
        ("snap-1", "us-east-1", "completed"),
        ("snap-1c", "eu-west-1", "copied"),
    ]
    assert rows[0]["taken_at"] == taken and rows[0]["journal_position"] == "2026-11-30:12"


# -- global options anywhere, --json on the reporting commands ------------------------------


def test_config_before_the_command_name_is_read(tmp_path, capsys):
    config = _config(tmp_path)
    assert agent.main(["--config", str(config), "check-config"]) == ExitCode.OK
    assert capsys.readouterr().out == f"{config}: OK\n"
    assert agent.main(["-q", "--config", str(config), "check-config"]) == ExitCode.OK
    assert capsys.readouterr().out == ""


def test_check_config_json_is_one_document_for_good_and_bad(tmp_path, capsys):
    config = _config(tmp_path)
    assert agent.main(["--json", "check-config", "--config", str(config)]) == ExitCode.OK
    assert json.loads(capsys.readouterr().out) == {
        "config": str(config), "online": False, "ok": True, "problems": [], "notes": [],
    }  # fmt: skip
    config.write_text(config.read_text().replace(str(tmp_path), str(tmp_path / "gone")))
    assert agent.main(["check-config", "--json", "--config", str(config)]) == ExitCode.USAGE
    document = json.loads(capsys.readouterr().out)
    assert document["ok"] is False
    assert document["problems"] == [f"storage.root: {tmp_path / 'gone'} is not a directory"]


def test_gc_json_reports_what_it_would_remove(tmp_path, capsys, monkeypatch):
    from agent.lifecycle.gc import GcReport

    config = _config(tmp_path)
    report = GcReport(copies=3, referenced=2, dry_run=True, would_remove=[("ab" * 32, 10)])
    monkeypatch.setattr("agent.cli.agent._locked_job", lambda *_a, **_k: report)
    assert agent.main(["gc", "--dry-run", "--json", "--config", str(config)]) == ExitCode.OK
    document = json.loads(capsys.readouterr().out)
    assert document["would_remove"] == [{"sha256": "ab" * 32, "bytes": 10}]
    assert (document["copies"], document["dry_run"]) == (3, True)


def test_iam_policy_accepts_json_and_stays_one_document(tmp_path, capsys):
    config = _config(tmp_path)
    assert agent.main(["--json", "iam-policy", "--config", str(config)]) == ExitCode.OK
    assert json.loads(capsys.readouterr().out)["Version"] == "2012-10-17"


def test_a_to_on_a_read_only_filesystem_is_refused_up_front(tmp_path, capsys, no_aws):
    """Root may write anywhere but not on a read-only mount (/proc/sys in a container)."""
    read_only = Path("/proc/sys")
    if not read_only.is_dir() or os.access(read_only, os.W_OK):
        pytest.skip("no read-only directory to try")
    config = _config(tmp_path)
    code, _out, err = _restore(
        ["restore", "--all", "--config", str(config), "--to", str(read_only / "restored")], capsys
    )
    assert code == ExitCode.USAGE
    assert (
        err == "backup-restore: --to /proc/sys/restored: /proc/sys is not writable by this user\n"
    )


def test_check_config_offline_names_a_region_the_queue_url_disagrees_with(tmp_path, capsys):
    config = _config(tmp_path)
    config.write_text(
        config.read_text().replace("aws: {region: us-east-1}", "aws: {region: eu-west-1}")
    )
    for online in ([], ["--online"]):  # found without AWS: --online does not get that far
        assert agent.main(["check-config", *online, "--config", str(config)]) == ExitCode.USAGE
        err = capsys.readouterr().err.splitlines()
        assert err[0] == f"{config}: invalid configuration"
        assert err[1:] == [
            "  aws.region: eu-west-1, but queue.url is in us-east-1: set aws.region to us-east-1"
        ]


def test_alarms_and_dashboard_dry_run_json_change_nothing(aws, backup_root, tmp_path, capsys):
    path = tmp_path / "config.yaml"
    path.write_text(
        "aws: {region: us-east-1}\n"
        'queue: {url: "https://sqs.us-east-1.amazonaws.com/123456789012/backup-events"}\n'
        "buckets: [company-documents]\n"
        f"storage: {{root: {backup_root}}}\n"
        "state: {table: backup-agent-objects}\n"
        "metrics: {instance_id: i-0json}\n"
        'alerts: {sns_topic_arn: "arn:aws:sns:us-east-1:123456789012:backup-alerts"}\n'
    )
    assert agent.main(["--json", "alarms", "--dry-run", "--config", str(path)]) == ExitCode.OK
    document = json.loads(capsys.readouterr().out)
    assert document["dry_run"] is True and document["alarms"]
    assert {alarm["action"] for alarm in document["alarms"]} == {"would be created"}
    assert [spec["AlarmName"] for spec in document["specs"]] == [
        alarm["name"] for alarm in document["alarms"]
    ]
    assert agent.main(["dashboard", "--json", "--dry-run", "--config", str(path)]) == 0
    body = json.loads(capsys.readouterr().out)  # --dry-run prints the body PutDashboard would get
    assert body["widgets"] and {widget["type"] for widget in body["widgets"]} >= {"metric"}
    cloudwatch = aws.session.client("cloudwatch")
    assert cloudwatch.describe_alarms()["MetricAlarms"] == []
    assert cloudwatch.list_dashboards()["DashboardEntries"] == []


def test_check_config_names_a_region_botocore_does_not_know(tmp_path, capsys):
    """Spelled as a region (the load accepts it), but no partition of the installed botocore
    names it; a custom endpoint (the local AWS) is not held against the list."""
    config = _config(tmp_path)
    text = config.read_text()
    config.write_text(
        text.replace("aws: {region: us-east-1}", "aws: {region: eu-middle-7}").replace(
            "sqs.us-east-1.amazonaws.com", "sqs.eu-middle-7.amazonaws.com"
        )
    )
    assert agent.main(["check-config", "--config", str(config)]) == ExitCode.USAGE
    assert capsys.readouterr().err.splitlines()[1:] == [
        "  aws.region: eu-middle-7 is not a region this botocore knows"
        " (a region newer than it? upgrade the agent)"
    ]
    for region in ("us-east-1", "eu-central-2", "us-gov-west-1", "cn-north-1"):
        config.write_text(text.replace("aws: {region: us-east-1}", f"aws: {{region: {region}}}"))
        config.write_text(
            config.read_text().replace("sqs.us-east-1.amazonaws.com", f"sqs.{region}.amazonaws.com")
        )
        agent.main(["check-config", "--config", str(config)])
        assert "not a region" not in capsys.readouterr().err, region
    config.write_text(
        'aws: {region: eu-middle-7, endpoint_url: "http://127.0.0.1:5000"}\n'
        'queue: {url: "http://127.0.0.1:5000/123456789012/backup-events"}\n'
        + text.split("\n", 2)[2]
    )
    agent.main(["check-config", "--config", str(config)])
    assert "not a region" not in capsys.readouterr().err  # the local AWS: any region
