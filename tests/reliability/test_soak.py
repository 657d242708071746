"""A bounded soak of the real agent: a steady stream of events (kept shallow in the queue)
while its resident memory and open file descriptors are sampled with psutil. Memory may
show no growth trend; every file the agent opened during the stream must be closed once the
queue is drained, and its idle sockets stay within one per thread that talks to AWS.
`make test` runs 500 events; `make soak` runs 20,000.

Descriptors are not compared as a trend of samples: a copy holds some for a moment (the
barrier's room, its temp file, a stream's socket), up to one set per message in flight, so
the count at any sample is the number of copies caught mid-commit (8 to 22 in one 500-event
run). Comparing the largest sample of two thirds failed CI once on that alone
(`22 <= 17 + 4`). A leak is what stays open when nothing is under way.
"""

from __future__ import annotations

import json
import os
import random
import signal
import statistics
import threading
import time
from collections import Counter
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
class Descriptors:
    """What a process has open: each file it points at (a path, pipe:[inode],
    anon_inode:...) counted, and its sockets apart."""

    files: Counter[str]
    sockets: int

    @classmethod
    def of(cls, pid: int) -> Descriptors:
        files: Counter[str] = Counter()
        sockets = 0
        directory = f"/proc/{pid}/fd"
        for fd in os.listdir(directory):
            try:
                target = os.readlink(f"{directory}/{fd}")
            except FileNotFoundError:  # closed since the listing
                continue
            if target.startswith("socket:"):
                sockets += 1
            else:
                files[target] += 1
        return cls(files, sockets)


@dataclass
class Samples:
    times: list[float] = field(default_factory=list)
    rss: list[int] = field(default_factory=list)
    fds: list[int] = field(default_factory=list)
    idle_before: Descriptors | None = None
    idle_after: Descriptors | None = None
    socket_limit: int = 0

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
        # Every event is a new version, which the duplicate-answering memory keeps (bounded:
        # 65,536 by default, ~13 MiB). At the default it would still be filling at 20,000
        # events, a linear growth by design the RSS check cannot tell from a leak; 256 fill
        # in the warm-up third, so what grows after is not that memory.
        consumer={"workers": 4, "recent_versions": 256},
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
        samples.idle_before = started_descriptors(agent.pid)
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
        samples.idle_after = settled_descriptors(agent.pid, samples.idle_before)
    finally:
        stop.set()
        code = agent.stop(signal.SIGTERM, timeout=30)
    assert code == 0
    assert sum(1 for _ in journal.read_all()) == events  # each event recorded once
    assert len(list(Volume(stack.root).objects_dir.rglob("*.zst"))) == KEYS
    # Idle connections kept: one per thread that talks to AWS at once (the workers' GETs and
    # ledger reads, the receiver, the committer, the deletes, the heartbeat), none leaked.
    samples.socket_limit = samples.idle_before.sockets + 2 * stack.config.consumer.workers + 4
    return samples


def started_descriptors(pid: int, timeout: float = 30.0) -> Descriptors:
    """The agent's descriptors once it has started: its config watcher, the daemon's last
    start step, holds an inotify descriptor (and then a pipe: the watcher opens both), and
    two looks 0.3 s apart find the same files."""
    deadline = time.monotonic() + timeout
    wait_until(lambda: "anon_inode:inotify" in Descriptors.of(pid).files, timeout=timeout)
    now = Descriptors.of(pid)
    while time.monotonic() < deadline:
        time.sleep(0.3)
        now, before = Descriptors.of(pid), now
        if now.files == before.files:
            return now
    raise TimeoutError(f"the agent's open files did not settle in {timeout} s: {now.files}")


def settled_descriptors(pid: int, before: Descriptors, timeout: float = 15.0) -> Descriptors:
    """The agent's descriptors once no file beyond `before` is open, or after `timeout`
    (a commit may still be closing its barrier descriptor when the queue reads empty)."""
    now = Descriptors.of(pid)
    deadline = time.monotonic() + timeout
    while now.files - before.files and time.monotonic() < deadline:
        time.sleep(0.1)
        now = Descriptors.of(pid)
    return now


def assert_no_growth(samples: Samples, *, rss_slack: float) -> None:
    assert len(samples.rss) >= 6, "too few samples"
    assert samples.idle_before is not None and samples.idle_after is not None
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
        "sockets_idle": samples.idle_after.sockets,
    }
    print("soak:", summary)
    assert statistics.median(last_rss) <= statistics.median(middle_rss) * rss_slack, summary
    left_open = samples.idle_after.files - samples.idle_before.files
    assert not left_open, f"open after the stream, not before it: {dict(left_open)}"
    sockets, limit = samples.idle_after.sockets, samples.socket_limit
    assert sockets <= limit, f"idle sockets {sockets} > {limit}: {summary}"


def test_a_short_soak_shows_no_memory_or_descriptor_growth(tmp_path, moto_server):
    events = int(os.environ.get("RELIABILITY_SHORT_SOAK_EVENTS", "500"))
    samples = run_soak(tmp_path, moto_server, events)
    assert_no_growth(samples, rss_slack=1.15)


@pytest.mark.soak
@pytest.mark.timeout(3600)  # ~30 events/s on 2 shared cores: about 11 minutes
def test_a_20000_event_soak_shows_no_memory_or_descriptor_growth(tmp_path, moto_server):
    events = int(os.environ.get("RELIABILITY_SOAK_EVENTS", "20000"))
    samples = run_soak(tmp_path, moto_server, events)
    assert_no_growth(samples, rss_slack=1.05)


def test_descriptors_name_each_open_file_and_count_sockets_apart(tmp_path):
    import socket

    leaked = tmp_path / "left-open.bin"
    before = Descriptors.of(os.getpid())
    with open(leaked, "wb"), socket.socket():
        during = Descriptors.of(os.getpid())
    assert before.files[str(leaked)] == 0 and during.files[str(leaked)] == 1
    assert during.sockets >= before.sockets + 1  # other threads may hold sockets too


def test_a_file_left_open_after_the_stream_fails_the_soak_but_transient_peaks_do_not():
    before = Descriptors(Counter({"/dev/null": 1, "pipe:[1]": 2}), sockets=2)
    # Copies caught mid-commit; the largest in the last third (22) is more than the middle
    # third's (17) + 4: the comparison that failed CI.
    peaks = [8, 12, 15, 17, 14, 15, 16, 22, 9, 8]
    samples = Samples(
        times=[i * 0.25 for i in range(len(peaks))],
        rss=[80 * 2**20] * len(peaks),
        fds=peaks,
        idle_before=before,
        idle_after=Descriptors(Counter({"/dev/null": 1, "pipe:[1]": 2}), sockets=6),
        socket_limit=60,
    )
    assert_no_growth(samples, rss_slack=1.05)

    samples.idle_after = Descriptors(
        Counter({"/dev/null": 1, "pipe:[1]": 2, "/v/tmp/a.part": 1}), sockets=6
    )
    with pytest.raises(AssertionError, match=r"/v/tmp/a\.part"):
        assert_no_growth(samples, rss_slack=1.05)

    samples.idle_after = Descriptors(Counter({"/dev/null": 1, "pipe:[1]": 2}), sockets=61)
    with pytest.raises(AssertionError, match="idle sockets 61 > 60"):
        assert_no_growth(samples, rss_slack=1.05)
