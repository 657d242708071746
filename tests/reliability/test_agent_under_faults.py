"""The real agent process with every AWS call going through a fault-injecting proxy:
throttling, 500s, connections dropped before and after the service acted, slow answers.
Nothing lost, nothing duplicated, no message deleted early, and healthy afterwards.
"""

from __future__ import annotations

import random
import signal

import pytest

from agent.ledger import Ledger
from agent.store import Volume
from tests.conftest import BUCKET, TABLE
from tests.e2e.conftest import make_stack
from tests.reliability.audit import DeleteAudit
from tests.reliability.conftest import point_agent_at
from tests.reliability.pipeline import assert_backed_up_once, wait_until
from tests.reliability.proxy import DROP, LOST_RESPONSE, SERVER_ERROR, SLOW, THROTTLE, FaultProxy

pytestmark = pytest.mark.e2e

KINDS = [THROTTLE, SERVER_ERROR, DROP, LOST_RESPONSE, SLOW]


def test_the_agent_rides_out_faults_on_s3_sqs_and_dynamodb(tmp_path, moto_server):
    rng = random.Random(4242)
    stack = make_stack(
        tmp_path,
        moto_server,
        queue={"visibility_timeout": 10},
        aws={"max_attempts": 4, "retry_mode": "standard"},
    )
    volume = Volume(stack.root)
    ledger = Ledger(stack.clients.dynamodb, TABLE)
    audit = DeleteAudit(ledger, volume)
    objects = {f"faulty/{i:02d}.bin": rng.randbytes(rng.randrange(1, 1_500_000)) for i in range(14)}
    objects["faulty/twin.bin"] = objects["faulty/00.bin"]
    with FaultProxy(moto_server.endpoint) as proxy:
        proxy.slow_seconds = 1.0
        proxy.rules.append(lambda _s, _o: rng.choice(KINDS) if rng.random() < 0.15 else None)
        proxy.observers.append(audit.observe)
        proxy.auditors.append(audit.audit)
        point_agent_at(stack, proxy.endpoint)
        agent = stack.start_agent()
        try:
            agent.wait_for("agent.started", timeout=30)
            for key, body in objects.items():
                stack.clients.s3.put_object(Bucket=BUCKET, Key=key, Body=body)
            wait_until(
                lambda: (
                    stack.queue_depth() == (0, 0) and all(ledger.latest(BUCKET, k) for k in objects)
                ),
                timeout=120,
                every=0.5,
            )
            services = {name.split(".")[0] for name in proxy.injected}
            assert {"s3", "sqs", "dynamodb"} <= services, proxy.injected

            proxy.rules.clear()
            stack.clients.s3.put_object(Bucket=BUCKET, Key="faulty/after.txt", Body=b"healthy")
            wait_until(lambda: ledger.latest(BUCKET, "faulty/after.txt") is not None, timeout=30)
            assert agent.process.poll() is None
        finally:
            code = agent.stop(signal.SIGTERM, timeout=30)
    assert code == 0
    assert audit.violations == []
    assert_backed_up_once(ledger, volume, BUCKET, {**objects, "faulty/after.txt": b"healthy"})
