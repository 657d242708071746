"""No traceback reaches a person: no credentials, no network, Ctrl-C and `| head` each end
every command-line tool with one line (none for a closed pipe) and their exit code."""

from __future__ import annotations

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
