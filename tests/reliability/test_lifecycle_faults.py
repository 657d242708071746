"""Lifecycle jobs under faults, with the real processes against moto_server:

* `backup-agent gc` (grace period 0) run again and again as a separate process while the
  live agent backs up the same contents under many keys: it removes the garbage it should,
  and never a copy a record references;
* `backup-agent reconcile` killed with SIGKILL mid-run, then run again: every object is
  backed up exactly once, no temp file remains.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from agent.storage.ledger import Ledger
from agent.storage.volume import Volume
from tests.e2e.conftest import Stack, make_stack
from tests.reliability.pipeline import wait_until
from tests.support.aws import BUCKET, TABLE
from tests.support.local_aws import FAKE_CREDENTIALS, agent_command

pytestmark = pytest.mark.e2e


def _job(stack: Stack, *args: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [*agent_command(), *args, "--config", str(stack.config_path)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **FAKE_CREDENTIALS},
        )


def _garbage(volume: Volume, count: int) -> list[Path]:
    """Copy files no record references, old enough for any grace period."""
    paths = []
    for n in range(count):
        sha = hashlib.sha256(f"garbage {n}".encode()).hexdigest()
        path = volume.copy_path(sha)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"not referenced")
        os.utime(path, (time.time() - 86400, time.time() - 86400))
        paths.append(path)
    return paths


def _assert_each_once(stack: Stack, volume: Volume, objects: dict[str, bytes]) -> None:
    ledger = Ledger(stack.clients.dynamodb, TABLE)
    for key, body in objects.items():
        versions = ledger.versions(BUCKET, key)
        assert [v.sha256 for v in versions] == [hashlib.sha256(body).hexdigest()], key
        volume.verify_copy(versions[0].sha256, len(body))
    assert list(volume.tmp_dir.iterdir()) == []


def test_gc_running_beside_the_live_agent_never_removes_a_referenced_copy(tmp_path, moto_server):
    stack = make_stack(tmp_path, moto_server, gc={"grace_period": 0}, metrics={"prometheus": None})
    volume = Volume(stack.root)
    garbage = _garbage(volume, 5)
    contents = [os.urandom(30_000 + n) for n in range(8)]
    objects = {f"dup/{n:03d}.bin": contents[n % len(contents)] for n in range(48)}
    agent = stack.start_agent()
    runs = 0
    try:
        agent.wait_for("agent.started", timeout=30)
        stop = threading.Event()

        def upload() -> None:
            for key, body in objects.items():
                stack.clients.s3.put_object(Bucket=BUCKET, Key=key, Body=body)
                time.sleep(0.02)  # spread the uploads over the gc runs
            stop.set()

        uploader = threading.Thread(target=upload)
        uploader.start()
        while not stop.is_set() or runs < 3:
            code = _job(stack, "gc", log=tmp_path / "gc.log").wait(60)
            assert code == 0, (tmp_path / "gc.log").read_text()[-2000:]
            runs += 1
        uploader.join()
        agent.wait_for("backup.stored", count=len(objects), timeout=60)
        wait_until(lambda: stack.queue_depth() == (0, 0), timeout=30, every=0.2)
        assert _job(stack, "gc", log=tmp_path / "gc.log").wait(60) == 0
    finally:
        assert agent.stop(timeout=30) == 0
    assert not any(p.exists() for p in garbage)  # gc did run and remove what it should
    _assert_each_once(stack, volume, objects)
    assert sorted(p.name for p in volume.objects_dir.rglob("*.zst")) == sorted(
        {hashlib.sha256(b).hexdigest() + ".zst" for b in contents}
    )


def test_reconcile_killed_mid_run_and_run_again_backs_up_everything_exactly_once(
    tmp_path, moto_server
):
    stack = make_stack(tmp_path, moto_server, metrics={"prometheus": None})
    volume = Volume(stack.root)
    objects = {f"rec/{n:03d}.bin": os.urandom(200_000 + n) for n in range(40)}
    for key, body in objects.items():
        stack.clients.s3.put_object(Bucket=BUCKET, Key=key, Body=body)
    log = tmp_path / "reconcile.log"
    first = _job(stack, "reconcile", log=log)
    # kill once copies are being made (some stored, the rest not yet)
    wait_until(
        lambda: first.poll() is None and len(list(volume.objects_dir.rglob("*.zst"))) >= 5,
        timeout=60,
        every=0.01,
    )
    os.kill(first.pid, signal.SIGKILL)
    assert first.wait(10) == -signal.SIGKILL
    done_before = len(list(volume.objects_dir.rglob("*.zst")))
    assert done_before < len(objects), "reconcile finished before the kill; use more objects"

    second = _job(stack, "reconcile", log=log)
    assert second.wait(120) == 0, log.read_text()[-2000:]
    _assert_each_once(stack, volume, objects)
    assert len(list(volume.objects_dir.rglob("*.zst"))) == len(objects)
