"""Scenario 5: event time → durable-and-recorded, under a steady upload rate."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from datetime import datetime

from agent.storage.ledger import Ledger
from bench.data import small_payload
from bench.stack import Setup
from bench.timing import percentile

BUCKET = "bench-latency"


@dataclass(frozen=True)
class Latency:
    rate: float
    count: int
    p50: float
    p99: float
    worst: float


def steady_uploads(setup: Setup, rate: float, seconds: float, seed: int = 5) -> Latency:
    """Upload objects of 1-256 KiB at `rate` per second for `seconds` with the agent running."""
    rng = random.Random(seed)
    run = setup.start_agent()
    try:
        count = max(1, int(rate * seconds))
        started = time.perf_counter()
        for index in range(count):
            due = started + index / rate
            time.sleep(max(0.0, due - time.perf_counter()))
            size = rng.choice((1, 4, 4, 16, 64, 256)) << 10
            setup.clients.s3.put_object(
                Bucket=BUCKET, Key=f"steady/{index:05d}.json", Body=small_payload(index, size)
            )
        stored = run.log.wait_for("backup.stored", count, timeout=300)
    finally:
        run.stop()
    durable_at = {str(e["key"]): _timestamp(str(e["timestamp"])) for e in stored}
    ledger = Ledger(setup.clients.dynamodb, setup.config.state.table)
    lags = [
        durable_at[record.key] - _timestamp(record.event_time)
        for record in ledger.keys(BUCKET, "steady/")
    ]
    if len(lags) != count:
        raise RuntimeError(f"{len(lags)} of {count} steady uploads recorded")
    return Latency(rate, count, percentile(lags, 0.5), percentile(lags, 0.99), max(lags))


def _timestamp(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()
