"""Scenario 1: one large object, end to end, next to its ceiling and the scripted pipeline."""

from __future__ import annotations

import contextlib
import itertools
import os
import resource
import shutil
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import psutil
from boto3.s3.transfer import TransferConfig

from bench.stack import Setup
from bench.timing import MiB, run_timed

BUCKET = "bench-large"
CHUNK = 1 << 20

# The awscli splits downloads above 8 MiB into ranged GETs; moto charges each one for the whole
# object, so the scripted pipeline gets one plain GET (its best case against this endpoint).
AWSCLI_CONFIG = """[default]
region = us-east-1
s3 =
  multipart_threshold = 64GB
"""


@dataclass(frozen=True)
class AgentBackup:
    size: int
    seconds: float
    idle_rss: int
    peak_rss: int
    sha256: str
    agent_cpu: float  # CPU seconds the agent process used for this object
    endpoint_cpu: float | None  # and the endpoint (moto_server), when it runs here
    timeline: CpuTimeline | None = None


class CpuTimeline:
    """CPU seconds of the agent, the endpoint and the whole machine, sampled every `interval`
    seconds while an object is backed up: where the wall time is not covered by every CPU
    working, and whether the CPUs the two did not use were idle or used by something else
    (other processes, the kernel's writeback threads, this benchmark)."""

    def __init__(
        self, agent: psutil.Process, endpoint: psutil.Process | None, interval: float = 0.02
    ) -> None:
        self.processes = (agent, endpoint)
        self.interval = interval
        self.samples: list[tuple[float, float, float]] = []  # (seconds, agent CPU, endpoint CPU)
        # (seconds, CPU seconds of every process, of interrupts, of this benchmark's process)
        self.machine: list[tuple[float, ...]] = []
        self.kernel: tuple[dict[int, float], dict[int, tuple[str, float]]] = ({}, {})
        self.sent: float | None = None  # perf_counter() when the event was sent
        self._bench = psutil.Process()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-timeline", daemon=True)

    def start(self) -> CpuTimeline:
        before = kernel_threads()  # read outside the timed window: its own cost is not counted
        self.sample()
        self._thread.start()
        self.kernel = ({pid: seconds for pid, (_, seconds) in before.items()}, {})
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()
        self.kernel = (self.kernel[0], kernel_threads())

    def sample(self) -> None:
        agent, endpoint = self.processes
        with contextlib.suppress(psutil.Error):
            now = time.perf_counter()
            self.samples.append((now, cpu_seconds(agent), cpu_seconds(endpoint)))
            busy, interrupts, idle = machine_busy_seconds()
            self.machine.append((now, busy, interrupts, cpu_seconds(self._bench), idle))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def slices(self, count: int = 10) -> list[tuple[float, float]]:
        """Agent and endpoint CPUs busy (0..cpus) in each of `count` equal slices of the run."""
        out = []
        for (low, high), width in self._bounds(count):
            a0, e0 = _cpu_at(self.samples, low)
            a1, e1 = _cpu_at(self.samples, high)
            out.append(((a1 - a0) / width, (e1 - e0) / width))
        return out

    def others(self, count: int = 10) -> list[float]:
        """CPUs busy with anything but the agent and the endpoint, in each slice."""
        out = []
        both = self.slices(count)
        for ((low, high), width), (agent, endpoint) in zip(self._bounds(count), both, strict=True):
            m0 = _at(self.machine, low)[0]
            m1 = _at(self.machine, high)[0]
            out.append(max(0.0, (m1 - m0) / width - agent - endpoint))
        return out

    def agent_started(self, rate: float = 0.5) -> float | None:
        """Seconds from the first sample until the agent first used `rate` CPUs over a
        sample's interval once the endpoint had (reading the object before its first byte):
        when its stream began, so the first-byte wait of this very run (its message's
        delivery, its GET, the endpoint reading the object), at the sampling interval's
        resolution. None when it never did."""
        endpoint_busy = False
        for (t0, a0, e0), (t1, a1, e1) in itertools.pairwise(self.samples):
            if t1 <= t0:
                continue
            endpoint_busy = endpoint_busy or (e1 - e0) / (t1 - t0) >= rate
            if endpoint_busy and (a1 - a0) / (t1 - t0) >= rate:
                return t0 - self.samples[0][0]
        return None

    def within(self, start: float, end: float) -> Window:
        """The CPU seconds between two perf_counter() moments, interpolated between samples:
        the agent's, the endpoint's, the machine's busy, this benchmark's and the idle."""
        a0, e0 = _cpu_at(self.samples, start)
        a1, e1 = _cpu_at(self.samples, end)
        m0 = _at(self.machine, start)
        m1 = _at(self.machine, end)
        return Window(a1 - a0, e1 - e0, m1[0] - m0[0], m1[2] - m0[2], m1[3] - m0[3])

    def shares(self) -> Shares:
        """Whose were the CPU seconds of the run that neither the agent nor the endpoint used
        (their sum is `others` over the whole run, read from /proc/stat)."""
        if len(self.machine) < 2 or len(self.samples) < 2:
            return Shares(0.0, 0.0, 0.0, 0.0, (), 0.0, 0.0)
        first, last = self.machine[0], self.machine[-1]
        agent = self.samples[-1][1] - self.samples[0][1]
        endpoint = self.samples[-1][2] - self.samples[0][2]
        others = max(0.0, last[1] - first[1] - agent - endpoint)
        before, after = self.kernel
        used = sorted(
            ((name, seconds - before.get(pid, 0.0)) for pid, (name, seconds) in after.items()),
            key=lambda item: -item[1],
        )
        return Shares(
            others,
            bench=last[3] - first[3],
            kernel=sum(seconds for _, seconds in used),
            interrupts=last[2] - first[2],
            busiest=tuple((name, seconds) for name, seconds in used[:3] if seconds > 0),
            idle=last[4] - first[4],
            window=last[0] - first[0],
        )

    def _bounds(self, count: int) -> list[tuple[tuple[float, float], float]]:
        if len(self.samples) < 2:
            return []
        start, end = self.samples[0][0], self.samples[-1][0]
        width = (end - start) / count
        return [
            ((start + index * width, start + (index + 1) * width), width) for index in range(count)
        ]


@dataclass(frozen=True)
class Window:
    """CPU seconds between two moments of a run (`CpuTimeline.within`)."""

    agent: float
    endpoint: float
    busy: float  # the whole machine's, not idle
    bench: float  # this benchmark's process
    idle: float

    @property
    def others(self) -> float:
        return max(0.0, self.busy - self.agent - self.endpoint)


@dataclass(frozen=True)
class Shares:
    """The CPU seconds of a run used by neither the agent nor the endpoint, and whose they
    were: this benchmark's own process (its sampling, its reading of the agent's log), the
    kernel's threads (writeback of the copy's pages, reclaim: pid 2 and its children) and
    interrupts (/proc/stat's irq and softirq: the loopback's packets, the disk's completions).
    The rest is everyone else's."""

    others: float
    bench: float
    kernel: float
    interrupts: float
    busiest: tuple[tuple[str, float], ...]  # the kernel threads that used the most
    idle: float  # CPU seconds no one used (/proc/stat's idle and iowait)
    window: float  # the seconds these were measured over (the run, from sample to sample)

    @property
    def machine(self) -> float:
        """The machine's own work in the run: this benchmark and the kernel's threads, never
        more than `others`. Not interrupts: on a kernel that accounts by ticks (this one), a
        tick taken in an interrupt is charged to the process it interrupted as well, so
        the agent's and the endpoint's CPU already hold some of it (the session's review)."""
        return min(self.others, self.bench + self.kernel)

    @property
    def rest(self) -> float:
        return self.others - self.machine


def kernel_threads() -> dict[int, tuple[str, float]]:
    """Every kernel thread's name and CPU seconds since it started, by pid (kthreadd, pid 2,
    and its children; a kworker's name says what it works on, e.g. `+flush-253:0`)."""
    out = {}
    for process in psutil.process_iter(["pid", "ppid", "name"]):
        info = process.info
        if info["pid"] == 2 or info["ppid"] == 2:
            with contextlib.suppress(psutil.Error):
                out[info["pid"]] = (str(info["name"]), cpu_seconds(process))
    return out


def machine_busy_seconds() -> tuple[float, float, float]:
    """CPU seconds every CPU of the machine has spent not idle since boot, of those in
    interrupts, and idle (/proc/stat; steal, the time the hypervisor gave to another guest,
    counts as busy: this machine did not get it; iowait counts as idle)."""
    times = psutil.cpu_times()
    busy = ("user", "nice", "system", "irq", "softirq", "steal")  # user includes guest
    interrupts = ("irq", "softirq")
    return (
        float(sum(getattr(times, name, 0.0) for name in busy)),
        float(sum(getattr(times, name, 0.0) for name in interrupts)),
        float(times.idle + getattr(times, "iowait", 0.0)),
    )


def _cpu_at(samples: list[tuple[float, float, float]], moment: float) -> tuple[float, float]:
    """The cumulative CPU seconds at `moment`, interpolated between samples."""
    agent, endpoint = _at(samples, moment)
    return agent, endpoint


def _at(samples: Sequence[tuple[float, ...]], moment: float) -> tuple[float, ...]:
    """The cumulative values of `samples` ((seconds, value...)) at `moment`, interpolated."""
    previous = samples[0]
    for sample in samples[1:]:
        if sample[0] >= moment:
            span = sample[0] - previous[0]
            share = (moment - previous[0]) / span if span > 0 else 1.0
            return tuple(
                before + share * (after - before)
                for before, after in zip(previous[1:], sample[1:], strict=True)
            )
        previous = sample
    return tuple(samples[-1][1:])


@dataclass(frozen=True)
class Scripted:
    download: float
    compress: float
    checksum: float

    @property
    def seconds(self) -> float:
        return self.download + self.compress + self.checksum


def upload(setup: Setup, path: Path, key: str) -> str:
    """Upload `path` (multipart) and return the body of its S3 event, taken off the queue."""
    setup.clients.s3.upload_file(str(path), BUCKET, key)
    bodies: list[str] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # take every event of the upload off the queue
        messages = setup.clients.sqs.receive_message(
            QueueUrl=setup.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1
        ).get("Messages", [])
        if not messages and bodies:
            break
        for message in messages:
            bodies.append(message["Body"])
            setup.clients.sqs.delete_message(
                QueueUrl=setup.queue_url, ReceiptHandle=message["ReceiptHandle"]
            )
    if not bodies:
        raise RuntimeError(f"no S3 event for {key}")
    complete = [body for body in bodies if "CompleteMultipartUpload" in body]
    return (complete or bodies)[-1]


def agent_backup(
    setup: Setup, event_body: str, size: int, endpoint_pid: int | None = None
) -> AgentBackup:
    """Start a fresh agent, hand it the object's event, time it until `backup.stored`."""
    run = setup.start_agent()
    try:
        assert run.rss is not None
        agent = run.rss.process
        endpoint = psutil.Process(endpoint_pid) if endpoint_pid else None
        idle = run.rss.reset()
        before = len(run.log.named("backup.stored"))
        cpu = (cpu_seconds(agent), cpu_seconds(endpoint) if endpoint else 0.0)
        timeline = CpuTimeline(agent, endpoint).start()
        sent = time.time()
        started = timeline.sent = time.perf_counter()
        try:
            setup.clients.sqs.send_message(QueueUrl=setup.queue_url, MessageBody=event_body)
            stored = run.log.wait_for("backup.stored", before + 1)[-1]
            seconds = logged_seconds(stored, sent, time.perf_counter() - started)
        finally:
            timeline.stop()
        agent_cpu = cpu_seconds(agent) - cpu[0]
        endpoint_cpu = cpu_seconds(endpoint) - cpu[1] if endpoint else None
        run.rss.sample()
        if int(stored["bytes"]) != size:
            raise RuntimeError(f"agent stored {stored['bytes']} bytes, expected {size}")
        return AgentBackup(
            size,
            seconds,
            idle,
            run.rss.peak,
            str(stored["sha256"]),
            agent_cpu,
            endpoint_cpu,
            timeline,
        )
    finally:
        run.stop()


def logged_seconds(event: dict[str, object], sent: float, seen: float) -> float:
    """Seconds from `sent` (time.time()) to the moment the agent logged `event`, by the log
    line's own timestamp (the agent's clock is this machine's): not the `seen` seconds until
    the benchmark's polling of the log (every 10 ms) noticed it. `seen` when the timestamp
    is missing or unreadable."""
    stamp = event.get("timestamp")
    try:
        logged = datetime.fromisoformat(str(stamp)).timestamp() - sent
    except ValueError:
        return seen
    return logged if 0 < logged <= seen else seen


def cpu_seconds(process: psutil.Process | None) -> float:
    if process is None:
        return 0.0
    times = process.cpu_times()
    return float(times.user + times.system)


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass(frozen=True)
class PlainGet:
    seconds: float
    first_byte: float  # seconds until the first chunk: moto_server reads the whole object first


def plain_get(setup: Setup, key: str) -> PlainGet:
    """A streaming GET of the object to nowhere, in the agent's chunk size."""
    started = time.perf_counter()
    body = setup.clients.s3.get_object(Bucket=BUCKET, Key=key)["Body"]
    first_byte = None
    while body.read(CHUNK):
        if first_byte is None:
            first_byte = time.perf_counter() - started
    seconds = time.perf_counter() - started
    return PlainGet(seconds, seconds if first_byte is None else first_byte)


def zstd_cli(path: Path, threads: int, level: int = 3) -> tuple[float, float]:
    """Seconds and CPU seconds of `zstd -3 -T<threads>` of the file."""
    cpu = children_cpu_seconds()
    seconds = run_timed(["zstd", f"-{level}", f"-T{threads}", "-q", "-c", str(path)])
    return seconds, children_cpu_seconds() - cpu


def scripted(setup: Setup, key: str, workdir: Path) -> Scripted:
    """`aws s3 cp` to a file, `zstd -3` of it, `sha256sum` of it — each timed."""
    workdir.mkdir(parents=True, exist_ok=True)
    target = workdir / "download.log"
    aws_config = workdir / "awscli.ini"
    aws_config.write_text(AWSCLI_CONFIG, encoding="utf-8")
    env = {**os.environ, "AWS_CONFIG_FILE": str(aws_config)}
    endpoint = setup.config.aws.endpoint_url or ""
    source = f"s3://{BUCKET}/{key}"
    if shutil.which("aws"):
        command = ["aws", "s3", "cp", "--only-show-errors", "--endpoint-url", endpoint]
        download = run_timed([*command, source, str(target)], env=env)
    else:  # no awscli here: boto3's download_file stands in for it (one GET, as above)
        started = time.perf_counter()
        setup.clients.s3.download_file(
            BUCKET, key, str(target), Config=TransferConfig(multipart_threshold=1 << 40)
        )
        download = time.perf_counter() - started
    compress = run_timed(["zstd", "-3", "-q", "-f", str(target), "-o", f"{target}.zst"])
    checksum = run_timed(["sha256sum", str(target)])
    target.unlink()
    Path(f"{target}.zst").unlink()
    return Scripted(download, compress, checksum)


def rss_mib(value: int) -> float:
    return value / MiB
