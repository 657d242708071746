"""`share` against moto_server: bootstrap prepares the staging bucket, the URL serves the bytes."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from agent.cli.restore import main
from agent.operations.bootstrap import Bootstrap
from agent.restore.share import LIFECYCLE_RULE_ID
from agent.storage.volume import Volume
from tests.e2e.conftest import make_stack
from tests.support.aws import BUCKET
from tests.support.backed_up import BackedUp
from tests.support.local_aws import FAKE_CREDENTIALS

STAGING = "recovery-shares"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def share_stack(tmp_path, moto_server):
    return make_stack(
        tmp_path,
        moto_server,
        restore={"staging_bucket": STAGING, "staging_prefix": "shared/", "share_expiry": "2d"},
    )


def _share(stack, *args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(["share", "--config", str(stack.config_path), *args], out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def test_bootstrap_makes_the_staging_location_private_encrypted_and_expiring(share_stack):
    s3 = share_stack.clients.s3

    rules = s3.get_bucket_lifecycle_configuration(Bucket=STAGING)["Rules"]
    encryption = s3.get_bucket_encryption(Bucket=STAGING)["ServerSideEncryptionConfiguration"]
    blocked = s3.get_public_access_block(Bucket=STAGING)["PublicAccessBlockConfiguration"]
    again = Bootstrap(share_stack.config, share_stack.clients).run()

    rule = next(r for r in rules if r["ID"] == LIFECYCLE_RULE_ID)
    assert rule["Status"] == "Enabled" and rule["Expiration"]["Days"] == 2
    assert rule["Filter"]["Prefix"] == "shared/"
    default = encryption["Rules"][0]["ApplyServerSideEncryptionByDefault"]
    assert default["SSEAlgorithm"] == "AES256"
    assert all(blocked.values())
    assert any("lifecycle rule" in what for what in again.existing)  # idempotent


def test_shared_url_serves_the_exact_bytes_of_the_chosen_version(share_stack):
    backups = BackedUp(share_stack.clients, Volume(share_stack.root))
    old = os.urandom(300_000)
    first = backups.put("reports/q1 ✓.pdf", old)
    backups.put("reports/q1 ✓.pdf", b"replaced later")
    backups.delete("reports/q1 ✓.pdf")

    code, out, err = _share(
        share_stack, "--key", "reports/q1 ✓.pdf", "--version", first, "--expires", "1h"
    )
    latest_code, latest_out, _ = _share(share_stack, "--key", "reports/q1 ✓.pdf", "--json")

    assert code == 0, err
    url = out.strip()
    assert url.startswith(share_stack.server.endpoint) and "Signature" in url
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.read() == old
    assert latest_code == 0
    shared = json.loads(latest_out)
    with urllib.request.urlopen(shared["url"], timeout=10) as response:
        assert response.read() == b"replaced later"
    staged_key = shared["staged"].removeprefix(f"s3://{STAGING}/")
    head = share_stack.clients.s3.head_object(Bucket=STAGING, Key=staged_key)
    assert staged_key.startswith("shared/") and staged_key.endswith("/q1 ✓.pdf")
    assert head["ServerSideEncryption"] == "AES256"


def test_share_refuses_a_url_outliving_the_staged_copy(share_stack):
    BackedUp(share_stack.clients, Volume(share_stack.root)).put("a.txt", b"a")

    code, _out, err = _share(share_stack, "--key", "a.txt", "--expires", "3d")

    assert code == 2 and "restore.share_expiry" in err


def test_the_restore_script_runs_as_a_program(share_stack):
    BackedUp(share_stack.clients, Volume(share_stack.root)).put("x/y.txt", b"why")

    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "restore"), "list", "--json",
         "--config", str(share_stack.config_path)],
        capture_output=True, env={**os.environ, **FAKE_CREDENTIALS}, timeout=60, check=False,
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(r["bucket"], r["key"], r["size"]) for r in rows] == [(BUCKET, "x/y.txt", 3)]


def test_keys_backed_up_by_the_real_agent_restore_byte_for_byte(stack, tmp_path):
    """moto's own events (keys URL-encoded, `/` as %2F) → agent → backup-restore process."""
    keys = ["with space/x.txt", "ünï/✓.csv", "plus+sign", "pct%2F.txt", "../../x", "/abs", "a//b"]
    keys += ["a", "a/b", "k" * 1024]
    bodies = {key: os.urandom(2000) + key.encode() for key in keys}
    agent = stack.start_agent()
    agent.wait_for("agent.started")
    for key, body in bodies.items():
        stack.clients.s3.put_object(Bucket=BUCKET, Key=key, Body=body)
    agent.wait_for("backup.stored", count=len(keys), timeout=60)
    target = tmp_path / "out" / "restored"

    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "restore"), "restore", "--all", "--json",
         "--to", str(target), "--config", str(stack.config_path)],
        capture_output=True, env={**os.environ, **FAKE_CREDENTIALS}, timeout=60, check=False,
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    files = {line["key"]: Path(line["destination"]) for line in lines if line["type"] == "file"}
    assert set(files) == set(keys)
    for key, path in files.items():
        assert path.resolve().is_relative_to(target.resolve()), key
        assert path.read_bytes() == bodies[key], key
    assert os.listdir(tmp_path / "out") == ["restored"]
