"""kill -9 of the real agent at seeded random points while it backs up large and small
objects, restarted each time. Every message deleted (DeleteMessage or DeleteMessageBatch) is
audited on its way to moto (through a loopback proxy): the copy and the ledger record must
already exist. In the end every object
is backed up exactly once, every copy verifies, and no temp file outlives a restart.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.storage.journal import Journal
from agent.storage.ledger import Ledger
from agent.storage.volume import Volume
from bench.proxy import FaultProxy
from tests.e2e.conftest import make_stack
from tests.reliability.audit import DeleteAudit
from tests.reliability.conftest import point_agent_at
from tests.reliability.pipeline import assert_backed_up_once, wait_until
from tests.support.aws import BUCKET, TABLE
from tests.support.local_aws import MotoServer

SEED = int(os.environ.get("RELIABILITY_SEED", "20261123"))


@dataclass(frozen=True)
class KillPoint:
    iteration: int
    mode: str
    after_seconds: float
    stored_before_kill: int
    temp_files_left: int


def run_kill_scenario(workdir: Path, server: MotoServer, *, seed: int, iterations: int) -> list:
    rng = random.Random(seed)
    stack = make_stack(
        workdir,
        server,
        queue={"visibility_timeout": 10},
        consumer={"workers": 3, "drain_timeout": 10},
    )
    volume = Volume(stack.root)
    ledger = Ledger(stack.clients.dynamodb, TABLE)
    audit = DeleteAudit(ledger, volume)
    expected: dict[str, bytes] = {}
    kills: list[KillPoint] = []
    with FaultProxy(server.endpoint) as proxy:
        proxy.observers.append(audit.observe)
        proxy.auditors.append(audit.audit)
        point_agent_at(stack, proxy.endpoint)
        try:
            for iteration in range(iterations):
                batch = _batch(rng, iteration, expected)
                for key, body in batch.items():
                    stack.clients.s3.put_object(Bucket=BUCKET, Key=key, Body=body)
                expected.update(batch)
                agent = _start_and_check_cleanup(stack, volume)
                mode = "mid-copy" if iteration % 2 == 0 else "timed"
                delay = _reach_kill_point(mode, rng, volume)
                stored = len(agent.log_events_named("backup.stored"))
                agent.process.send_signal(signal.SIGKILL)
                agent.process.wait(10)
                kills.append(
                    KillPoint(iteration, mode, round(delay, 3), stored, len(_temp(volume)))
                )

            final = _start_and_check_cleanup(stack, volume)
            wait_until(
                lambda: (
                    stack.queue_depth() == (0, 0)
                    and all(ledger.latest(BUCKET, k) for k in expected)
                ),
                timeout=90,
                every=0.5,
            )
            assert final.stop(signal.SIGTERM) == 0
        finally:
            for agent in stack.agents:
                agent.stop(timeout=10)

    assert audit.violations == []
    assert audit.audited >= len(expected)
    assert_backed_up_once(ledger, volume, BUCKET, expected)
    assert sum(1 for k in kills if k.temp_files_left) >= 1, kills  # some kills hit a copy
    # The volume's own record knows every version the ledger knows. A kill between the
    # journal line and the DynamoDB write may leave a version there twice (replay is
    # idempotent), never missing.
    journal = [(r.key, r.version_token) for r in Journal(volume.journal_dir).read_all()]
    for key in expected:
        assert (key, ledger.versions(BUCKET, key)[0].version_token) in journal, key
    print("journal lines repeated after a kill:", len(journal) - len(set(journal)))
    return kills


def _batch(rng: random.Random, iteration: int, earlier: dict[str, bytes]) -> dict[str, bytes]:
    batch = {f"crash/{iteration:02d}/large.bin": rng.randbytes(rng.randrange(2 << 20, 5 << 20))}
    for n in range(4):
        batch[f"crash/{iteration:02d}/small-{n}.txt"] = rng.randbytes(rng.randrange(1, 40_000))
    if earlier:  # the same bytes under a new key: deduplicated, still recorded
        batch[f"crash/{iteration:02d}/copy.bin"] = earlier[rng.choice(sorted(earlier))]
    return batch


def _reach_kill_point(mode: str, rng: random.Random, volume: Volume) -> float:
    """Wait for the seeded kill point: a random time, or just after a copy has begun."""
    started = time.monotonic()
    if mode == "timed":
        time.sleep(rng.uniform(0.05, 1.5))
    else:
        deadline = started + 5
        while not _temp(volume) and time.monotonic() < deadline:
            time.sleep(0.001)
    return time.monotonic() - started


def _temp(volume: Volume) -> set[str]:
    return {p.name for p in volume.tmp_dir.iterdir()} if volume.tmp_dir.is_dir() else set()


def _start_and_check_cleanup(stack, volume: Volume):
    leftovers = _temp(volume)
    agent = stack.start_agent()
    agent.wait_for("agent.started", timeout=30)
    assert not leftovers & _temp(volume), "temp files of the crashed run survived the restart"
    return agent


@pytest.mark.e2e
def test_kill_9_at_random_points_loses_and_doubles_nothing(tmp_path, moto_server):
    kills = run_kill_scenario(tmp_path, moto_server, seed=SEED, iterations=6)
    print("kill points:", kills)


@pytest.mark.e2e
@pytest.mark.soak
@pytest.mark.timeout(1800)
def test_kill_9_soak(tmp_path, moto_server):
    iterations = int(os.environ.get("RELIABILITY_KILL_ITERATIONS", "40"))
    kills = run_kill_scenario(tmp_path, moto_server, seed=SEED + 1, iterations=iterations)
    print("kill points:", kills)


def test_the_delete_audit_flags_a_message_deleted_before_its_copy(pipeline):
    """The audit itself can fail: a DeleteMessage for an event not yet backed up."""
    from bench.proxy import Exchange
    from tests.reliability.pipeline import notification, s3_record

    audit = DeleteAudit(pipeline.ledger, pipeline.volume)
    body = json.dumps(notification(s3_record(BUCKET, "early.txt", size=1, sequencer="01")))
    received = json.dumps({"Messages": [{"ReceiptHandle": "h-1", "Body": body}]}).encode()
    audit.observe(Exchange("sqs", "ReceiveMessage", b"{}", 200, received))

    audit.audit(Exchange("sqs", "DeleteMessage", json.dumps({"ReceiptHandle": "h-1"}).encode()))
    audit.audit(Exchange("sqs", "DeleteMessage", json.dumps({"ReceiptHandle": "h-?"}).encode()))
    batch = {"Entries": [{"Id": "0", "ReceiptHandle": "h-?"}, {"Id": "1", "ReceiptHandle": "h-1"}]}
    audit.audit(Exchange("sqs", "DeleteMessageBatch", json.dumps(batch).encode()))

    assert audit.violations == [
        "early.txt: deleted before its ledger record existed",
        "DeleteMessage for a receipt handle never received",
        "DeleteMessage for a receipt handle never received",
        "early.txt: deleted before its ledger record existed",
    ]
    assert audit.audited == 4
