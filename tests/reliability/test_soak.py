"""A bounded soak of the real agent: a steady stream of events (kept shallow in the queue)
while its resident memory and open file descriptors are sampled with psutil. Neither may
show a growth trend. `make test` runs 500 events; `make soak` runs 20,000.
"""

from __future__ import annotations

import json
import os
import random
import signal
import statistics
import threading
import time
from dataclasses import dataclass, field

import psutil
import pytest

from agent.storage.journal import Journal
from agent.storage.volume import Volume
from tests.e2e.conftest import make_stack
from tests.reliability.pipeline import notification, s3_record, wait_until
from tests.support.aws import BUCKET

pytestmark = pytest.mark.e2e

KEYS = 40
MAX_VISIBLE = 60


@dataclass
class Samples:
    times: list[float] = field(default_factory=list)
    rss: list[int] = field(default_factory=list)
    fds: list[int] = field(default_factory=list)

    def thirds(self, values: list[int]) -> tuple[list[int], list[int]]:
        third = max(1, len(values) // 3)
        return values[third : 2 * third], values[-third:]  # skip the warm-up third

    def slope_per_minute(self, values: list[int]) -> float:
        if len(values) < 3:
            return 0.0
        return statistics.linear_regression(self.times, values).slope * 60


def _sample(pid: int, samples: Samples, stop: threading.Event) -> None:
    process = psutil.Process(pid)
    start = time.monotonic()
    while not stop.wait(0.25):
        try:
            rss, fds = process.memory_info().rss, process.num_fds()
        except psutil.Error:
            return
        samples.times.append(time.monotonic() - start)
        samples.rss.append(rss)
        samples.fds.append(fds)


def run_soak(tmp_path, moto_server, events: int) -> Samples:
    rng = random.Random(7)
    stack = make_stack(
        tmp_path,
        moto_server,
        consumer={"workers": 4},
        logging={"level": "WARNING"},  # keep the log file small over 20,000 events
        queue={"wait_time_seconds": 1},
    )
    sqs, url = stack.clients.sqs, stack.config.queue.url
    bodies = {f"soak/{i:02d}.dat": rng.randbytes(rng.randrange(100, 30_000)) for i in range(KEYS)}
    etags = {}
    for key, body in bodies.items():
        etags[key] = stack.clients.s3.put_object(Bucket=BUCKET, Key=key, Body=body)["ETag"]
    while batch := sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages"):
        for message in batch:  # moto's own events: the soak sends versioned ones
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    agent = stack.start_agent()
    samples, stop = Samples(), threading.Event()
    sampler = threading.Thread(target=_sample, args=(agent.pid, samples, stop), daemon=True)
    keys = sorted(bodies)
    try:
        wait_until(lambda: psutil.Process(agent.pid).num_threads() > 4, timeout=30)
        sampler.start()
        sent = 0
        while sent < events:
            if stack.queue_depth()[0] > MAX_VISIBLE:
                time.sleep(0.05)
                continue
            entries = []
            for n in range(sent, min(sent + 10, events)):
                key = keys[n % KEYS]
                record = s3_record(
                    BUCKET,
                    key,
                    size=len(bodies[key]),
                    etag=etags[key].strip('"'),
                    sequencer=f"{n + 1:016X}",
                )
                entries.append({"Id": str(n), "MessageBody": json.dumps(notification(record))})
            sqs.send_message_batch(QueueUrl=url, Entries=entries)
            sent += len(entries)
        journal = Journal(Volume(stack.root).journal_dir)
        wait_until(lambda: stack.queue_depth() == (0, 0), timeout=max(60, events / 10), every=1)
        stop.set()
        sampler.join(5)
        assert agent.process.poll() is None
    finally:
        stop.set()
        code = agent.stop(signal.SIGTERM, timeout=30)
    assert code == 0
    assert sum(1 for _ in journal.read_all()) == events  # each event recorded once
    assert len(list(Volume(stack.root).objects_dir.rglob("*.zst"))) == KEYS
    return samples


def assert_no_growth(samples: Samples, *, rss_slack: float, fd_slack: int) -> None:
    assert len(samples.rss) >= 6, "too few samples"
    middle_rss, last_rss = samples.thirds(samples.rss)
    middle_fds, last_fds = samples.thirds(samples.fds)
    summary = {
        "samples": len(samples.rss),
        "seconds": round(samples.times[-1], 1),
        "rss_mib_middle": round(statistics.median(middle_rss) / 2**20, 1),
        "rss_mib_last": round(statistics.median(last_rss) / 2**20, 1),
        "rss_mib_per_minute": round(samples.slope_per_minute(samples.rss) / 2**20, 2),
        "fds_middle_max": max(middle_fds),
        "fds_last_max": max(last_fds),
    }
    print("soak:", summary)
    assert statistics.median(last_rss) <= statistics.median(middle_rss) * rss_slack, summary
    assert max(last_fds) <= max(middle_fds) + fd_slack, summary


def test_a_short_soak_shows_no_memory_or_descriptor_growth(tmp_path, moto_server):
    events = int(os.environ.get("RELIABILITY_SHORT_SOAK_EVENTS", "500"))
    samples = run_soak(tmp_path, moto_server, events)
    assert_no_growth(samples, rss_slack=1.15, fd_slack=4)


@pytest.mark.soak
@pytest.mark.timeout(3600)  # ~30 events/s on 2 shared cores: about 11 minutes
def test_a_20000_event_soak_shows_no_memory_or_descriptor_growth(tmp_path, moto_server):
    events = int(os.environ.get("RELIABILITY_SOAK_EVENTS", "20000"))
    samples = run_soak(tmp_path, moto_server, events)
    assert_no_growth(samples, rss_slack=1.05, fd_slack=2)
