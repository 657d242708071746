"""An offline restore needs no AWS, and does not load it (issue 19: start-up).

`backup-restore restore --offline` reads the volume alone; boto3's session and client
machinery took ~0.2 s of its ~0.7 s of imports. These run the real command in a fresh
interpreter (a module imported by an earlier test would hide an import) and look at what
it loaded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from agent.config import load_config
from agent.storage.volume import Volume
from bench.seed import seed_small

BUCKET = "company-documents"
# Loaded by boto3 and by making a client; `botocore.exceptions` alone (error sorting) is light
# and allowed.
AWS_MACHINERY = ("boto3", "botocore.session", "botocore.client", "s3transfer")

PROBE = """
import json, sys
from agent.cli.restore import main
code = main(sys.argv[1:])
loaded = sorted(m for m in {names} if m in sys.modules)
print(json.dumps({{"code": code, "loaded": loaded}}), file=sys.stderr)
"""


@pytest.fixture
def offline_volume(tmp_path: Path) -> Path:
    """A config whose AWS endpoint answers nothing, and a volume holding 20 small copies."""
    root = tmp_path / "volume"
    root.mkdir()
    config = {
        "aws": {"region": "us-east-1", "endpoint_url": "http://127.0.0.1:1", "max_attempts": 1},
        "queue": {"url": "http://127.0.0.1:1/123456789012/backup-events"},
        "buckets": [BUCKET],
        "storage": {"root": str(root), "min_free_bytes": 0},
        "state": {"table": "backup-agent-objects"},
        "logging": {"format": "json", "level": "INFO"},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    Volume(root).initialise("vol-offline")
    seed_small(load_config(path), None, BUCKET, 20, 512)
    return path


def _run(config: Path, *argv: str) -> tuple[dict[str, object], str]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    env.pop("AWS_ENDPOINT_URL", None)
    result = subprocess.run(
        [sys.executable, "-c", PROBE.format(names=repr(AWS_MACHINERY)), *argv, "--config", config],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    return json.loads(result.stderr.splitlines()[-1]), result.stderr


def test_an_offline_restore_loads_no_aws_client_machinery(offline_volume, tmp_path):
    target = tmp_path / "restored"
    probe, err = _run(offline_volume, "restore", "--offline", "--all", "--to", str(target))
    assert probe == {"code": 0, "loaded": []}, err
    assert len(list((target / "small").iterdir())) == 20


def test_an_online_command_still_loads_and_uses_boto3(offline_volume, tmp_path):
    """The same command without --offline makes its clients (and fails to reach the dead
    endpoint): the lazy imports are still made where a client is."""
    probe, err = _run(offline_volume, "restore", "--all", "--to", str(tmp_path / "online"))
    assert probe["code"] != 0, err
    assert "boto3" in probe["loaded"] and "botocore.client" in probe["loaded"], err
