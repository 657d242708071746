"""`backup-agent reconcile|retention|gc|scrub` end to end in-process (mock_aws, real files)."""

from __future__ import annotations

import logging

import pytest
import structlog
import yaml

from agent.cli.agent import main
from agent.cli.common import ExitCode
from agent.storage.ledger import Ledger
from tests.support.aws import BUCKET, QUEUE_URL, REGION, TABLE
from tests.support.lifecycle import put


@pytest.fixture(autouse=True)
def _restore_logging():
    """main() configures logging onto pytest's captured stream: undo that afterwards."""
    handlers = list(logging.root.handlers)
    yield
    structlog.reset_defaults()
    logging.root.handlers[:] = handlers


def write_config(tmp_path, root):
    path = tmp_path / "config.yaml"
    raw = {
        "aws": {"region": REGION},
        "queue": {"url": QUEUE_URL},
        "buckets": [BUCKET],
        "storage": {"root": str(root), "min_free_bytes": 0, "compression_threads": 1},
        "state": {"table": TABLE},
        "logging": {"format": "json", "level": "WARNING"},
        "reconcile": {"objects_per_second": 1000},
        "retention": {"keep_last_versions": 1},
        "gc": {"grace_period": "1h"},
        "scrub": {"share_per_run": 1.0},
    }
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def test_lifecycle_commands_run_against_the_configured_account(
    aws, volume, backup_root, tmp_path, capsys
):
    config_file = write_config(tmp_path, backup_root)
    put(aws, "a.txt", b"alpha" * 10)
    put(aws, "b.txt", b"beta" * 10)

    assert main(["reconcile", "--config", config_file, "--dry-run"]) == ExitCode.OK
    assert "would back up 2 (90 bytes)" in capsys.readouterr().out
    assert Ledger(aws.dynamodb, TABLE).latest(BUCKET, "a.txt") is None

    assert main(["reconcile", "--config", config_file]) == ExitCode.OK
    assert "backed up 2" in capsys.readouterr().out
    assert Ledger(aws.dynamodb, TABLE).latest(BUCKET, "a.txt").size == 50

    assert main(["retention", "--config", config_file, "--dry-run"]) == ExitCode.OK
    assert "would expire 0" in capsys.readouterr().out
    assert main(["gc", "--config", config_file, "--dry-run"]) == ExitCode.OK
    assert "would remove 0 copies, 0 bytes" in capsys.readouterr().out
    assert main(["scrub", "--config", config_file]) == ExitCode.OK
    assert "checked 2 of 2 copies, 0 corrupt" in capsys.readouterr().out


def test_lifecycle_commands_refuse_an_unmarked_volume(tmp_path, backup_root, capsys):
    config_file = write_config(tmp_path, backup_root)  # no init-volume: no marker
    assert main(["gc", "--config", config_file]) == 3
    assert "not ready" in capsys.readouterr().err
