"""Hostile share links: a URL must be one S3 still accepts (SigV4; buckets made since 2020
refuse SigV2) and must not promise a lifetime its signing credentials do not have.

Instance-role, SSO and assumed-role credentials expire (hours); a URL signed with them dies
with them, whatever `X-Amz-Expires` says. botocore reads such an expiry from
$AWS_CREDENTIAL_EXPIRATION, which stands in for the instance role here.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

from agent.aws import Clients
from agent.cli.common import ExitCode
from agent.cli.restore import main
from agent.storage.volume import Volume
from tests.support.aws import bootstrapped_aws, make_config
from tests.support.backed_up import BackedUp, write_config

STAGING = "recovery-shares"
RESTORE = {"staging_bucket": STAGING, "staging_prefix": "shared/", "share_expiry": "7d"}
KEY = "reports/q1.pdf"


@pytest.fixture
def shared_aws(backup_root: Path, volume: Volume) -> Iterator[tuple[Clients, Path]]:
    with bootstrapped_aws(make_config(backup_root, restore=RESTORE)) as clients:
        BackedUp(clients, volume).put(KEY, b"quarterly figures" * 100)
        path = write_config(backup_root.parent / "config.yaml", backup_root, restore=RESTORE)
        yield clients, path


def share(path: Path, *args: str) -> tuple[int, dict[str, Any], str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(["share", "--config", str(path), "--key", KEY, "--json", *args], out=out, err=err)
    return code, (json.loads(out.getvalue()) if code == 0 else {}), err.getvalue()


def query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlparse(url).query).items()}


def expiring_in(monkeypatch: pytest.MonkeyPatch, seconds: int) -> datetime:
    expiry = (datetime.now(UTC) + timedelta(seconds=seconds)).replace(microsecond=0)
    monkeypatch.setenv("AWS_CREDENTIAL_EXPIRATION", expiry.isoformat())
    return expiry


def test_a_share_url_is_signed_with_sigv4(shared_aws):
    _clients, path = shared_aws
    code, shared, err = share(path, "--expires", "2d")
    assert code == ExitCode.OK, err
    signed = query(shared["url"])
    assert signed["X-Amz-Algorithm"] == "AWS4-HMAC-SHA256"
    assert int(signed["X-Amz-Expires"]) == 2 * 86400  # long-term keys: what was asked
    assert "Signature" not in signed and "AWSAccessKeyId" not in signed  # no SigV2 left
    assert "warning" not in shared and "shorter" not in err


def test_a_url_never_outlives_the_credentials_that_sign_it(shared_aws, monkeypatch):
    _clients, path = shared_aws
    expiry = expiring_in(monkeypatch, 3600)  # an instance-role session with an hour left

    code, shared, err = share(path, "--expires", "6h")

    assert code == ExitCode.OK, err
    signed = query(shared["url"])
    assert signed["X-Amz-Algorithm"] == "AWS4-HMAC-SHA256"
    remaining = (expiry - datetime.now(UTC)).total_seconds()
    assert 3000 < int(signed["X-Amz-Expires"]) <= remaining
    assert datetime.fromisoformat(shared["expires_at"]) <= expiry  # the real expiry, printed
    assert "credentials" in shared["warning"] and "6h" in shared["warning"]
    assert "shorter" in err and expiry.isoformat(timespec="seconds") in err


def test_the_text_output_prints_the_real_expiry_and_warns(shared_aws, monkeypatch):
    _clients, path = shared_aws
    expiry = expiring_in(monkeypatch, 3600)
    out, err = io.StringIO(), io.StringIO()
    code = main(["share", "--config", str(path), "--key", KEY, "--expires", "1d"], out=out, err=err)
    assert code == ExitCode.OK, err.getvalue()
    assert "X-Amz-Algorithm=AWS4-HMAC-SHA256" in out.getvalue()
    until = err.getvalue().split(" until ", 1)[1].split()[0]
    assert datetime.fromisoformat(until) <= expiry
    assert "warning" in err.getvalue() and "1d" in err.getvalue()


def test_credentials_about_to_expire_are_refused_before_anything_is_staged(shared_aws, monkeypatch):
    clients, path = shared_aws
    expiring_in(monkeypatch, 30)

    code, _shared, err = share(path, "--expires", "1h")

    assert code == ExitCode.FAILURE
    assert "credentials" in err and "expire" in err
    assert clients.s3.list_objects_v2(Bucket=STAGING).get("KeyCount", 0) == 0
