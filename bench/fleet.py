"""Section 7: a fleet on one queue — N agent processes, one table, a volume each.

Every agent's AWS calls go through a loopback proxy that adds a fixed delay per request
(bench/proxy.py, `latency`), so that round trips bound each agent as on real AWS, not the
CPU of the local endpoint. Small objects are uploaded once; each fleet size then gets a
fresh table, queue(s) and volumes, and the same events fed as in section 2 (at most `depth`
outstanding per agent, because moto's SQS slows down as a queue grows).

Exactly once is counted on the volumes, not from the agents' logs: for every version sent,
how many volumes hold its copy (content-addressed file), and the volumes' journals as a
cross-check; the ledger must record every version once, naming a volume that holds it.

A fleet is made of replica *groups*, each with its own queue and members; every event goes
to every group's queue (what SNS fan-out to one queue per group does), so each version is
expected on exactly `groups` volumes. The section runs one group (`replicas: 1`); a
`replicas: 2` variant is `measure(make_fleet(..., groups=2), ...)`.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import yaml

from agent.aws import Clients
from agent.records import VersionRecord
from agent.storage.journal import Journal
from agent.storage.ledger import VERSION_PREFIX, parse_item
from agent.storage.volume import Volume
from bench.data import small_payload
from bench.proxy import Exchange, FaultProxy
from bench.report import Report
from bench.settings import Settings
from bench.small import Feeder, event_body
from bench.stack import AgentRun, Endpoint, Setup, make_setup
from tests.support.local_aws import AgentProcess

BUCKET = "bench-fleet"
# What an agent logs once a version it took is done: its own copy recorded, or (another
# group's member won the conditional write) its copy kept as a counted fleet duplicate.
DONE_EVENTS = ("backup.stored", "backup.fleet_duplicate")


@dataclass(frozen=True)
class FleetObject:
    key: str
    size: int
    etag: str
    sha256: str


@dataclass
class Member:
    config_path: Path
    volume_root: Path
    volume_id: str
    run: AgentRun | None = None
    _done: int = 0
    _polled: float = 0.0

    @property
    def log_path(self) -> Path:
        """This member's agent log: `<fleet>/logs/<member>.log`, out of the directory of its
        config.yaml, which the agent watches for edits (agent/runtime/reload.py): a log line
        there woke the watcher each time (an inotify event per `backup.stored`, ~0.5 ms of
        the agent's CPU: bench/stack.py's `start_agent`, docs/benchmarks.md)."""
        return self.config_path.parent.parent / "logs" / f"{self.config_path.parent.name}.log"

    def done(self) -> int:
        """Versions done, from the log read at most every 20 ms (the feeder and the main
        loop both ask, and this process's CPU is the proxy's too)."""
        if self.run is not None and time.monotonic() - self._polled >= 0.02:
            self._done = sum(len(self.run.log.named(name)) for name in DONE_EVENTS)
            self._polled = time.monotonic()
        return self._done


@dataclass
class Group:
    """One replica group: a queue and the members that consume it."""

    queue_url: str
    members: list[Member] = field(default_factory=list)

    def done(self) -> int:
        return sum(member.done() for member in self.members)


@dataclass
class Fleet:
    name: str
    setup: Setup  # direct clients (no proxy), the table, the work directory
    groups: list[Group]

    @property
    def members(self) -> list[Member]:
        return [member for group in self.groups for member in group.members]


@dataclass(frozen=True)
class Copies:
    """What the volumes and the ledger hold for the versions sent."""

    versions: int
    copies: int  # copy files of those versions over every volume
    twice: int  # versions held by more volumes than groups: copied twice (or more)
    missing: int  # versions held by fewer volumes than groups
    journal_twice: int  # the same from the volumes' journals
    unrecorded: int  # versions with no ledger record
    misplaced: int  # ledger records naming a volume that does not hold the copy

    @property
    def exact(self) -> int:
        """Versions on exactly as many volumes as there are groups."""
        return self.versions - self.twice - self.missing


@dataclass(frozen=True)
class FleetRun:
    members: int
    groups: int
    count: int
    seconds: float
    copies: Copies
    endpoint_cpu: float | None  # moto_server's CPU seconds during the run
    agents_cpu: float  # every agent's CPU seconds during the run
    bench_cpu: float  # this process (the proxy and the feeder) during the run
    calls: Counter[str]  # requests through the proxy during the run, per service.operation
    left: int = 0  # messages still counted in the queue 10 s after every version was done

    @property
    def rate(self) -> float:
        return self.count / self.seconds

    @property
    def requests(self) -> int:
        return sum(self.calls.values())


def upload_objects(clients: Clients, count: int, size: int, threads: int = 4) -> list[FleetObject]:
    """`count` distinct objects of `size` bytes, uploaded directly (not through the proxy)."""

    def put(index: int) -> FleetObject:
        key = f"fleet/{index:05d}.json"
        body = small_payload(index, size)
        response = clients.s3.put_object(Bucket=BUCKET, Key=key, Body=body)
        return FleetObject(key, size, response["ETag"].strip('"'), hashlib.sha256(body).hexdigest())

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(put, range(count)))


def make_fleet(
    root: Path,
    endpoint: str,
    proxy: str,
    name: str,
    members: int,
    *,
    groups: int = 1,
    workers: int = 2,
) -> Fleet:
    """`members` agent configs per group on one table; each group its own queue, each
    member its own volume; the agents call AWS through `proxy`."""
    setup = make_setup(root, endpoint, name, bucket=BUCKET, notify=False, workers=workers)
    raw = yaml.safe_load(setup.config_path.read_text(encoding="utf-8"))
    raw["aws"]["endpoint_url"] = proxy
    raw["metrics"] = {"prometheus": None}  # one port per host: the members would collide
    fleet = Fleet(name, setup, [])
    if groups > 1:  # replica groups are named by their queues: <base>-1 … <base>-R
        raw["fleet"] = {"replicas": groups}
    for g in range(groups):
        queue_url = setup.queue_url
        if groups > 1:
            queue_url = setup.clients.sqs.create_queue(
                QueueName=f"bench-{name}-{g + 1}", Attributes={"VisibilityTimeout": "120"}
            )["QueueUrl"]
        group = Group(queue_url)
        for m in range(members):
            workdir = setup.workdir / f"g{g}-member-{m}"
            volume_root = workdir / "volume"
            volume_root.mkdir(parents=True)
            volume_id = f"vol-{name}-g{g}-m{m}"
            Volume(volume_root).initialise(volume_id)
            raw["queue"]["url"] = queue_url
            raw["storage"]["root"] = str(volume_root)
            config_path = workdir / "config.yaml"
            config_path.write_text(yaml.safe_dump(raw), encoding="utf-8")
            group.members.append(Member(config_path, volume_root, volume_id))
        fleet.groups.append(group)
    return fleet


def measure(
    fleet: Fleet,
    objects: Sequence[FleetObject],
    depth: int,
    *,
    endpoint_pid: int | None = None,
    calls: Callable[[], Counter[str]] | None = None,
    timeout: float = 600.0,
) -> FleetRun:
    """Start every member, feed every object's event to every group, time until every group
    has done them all, stop the members, and count the copies on the volumes."""
    members = fleet.members
    for member in members:
        member.log_path.parent.mkdir(exist_ok=True)
    runs = [AgentRun(AgentProcess(m.config_path, m.log_path)) for m in members]
    for member, run in zip(members, runs, strict=True):
        member.run = run
    try:
        with ThreadPoolExecutor(len(runs)) as pool:
            list(pool.map(AgentRun.start, runs))
            # measured from the steady state: the start-up encryption check has ended
            list(pool.map(AgentRun.wait_settled, runs))
        bodies = [event_body(obj, bucket=BUCKET) for obj in objects]
        count = len(bodies)
        endpoint = psutil.Process(endpoint_pid) if endpoint_pid else None
        agents = [psutil.Process(run.process.pid) for run in runs]
        endpoint_before = _cpu(endpoint) if endpoint else 0.0
        agents_before = sum(_cpu(a) for a in agents)
        bench_before = time.process_time()
        calls_before = calls() if calls else Counter()
        started = time.perf_counter()
        feeders = [
            Feeder(
                fleet.setup.clients,
                group.queue_url,
                bodies,
                max(10, depth * len(group.members)),  # the feeder sends batches of 10
                group.done,
            ).start()
            for group in fleet.groups
        ]
        deadline = time.monotonic() + timeout
        while any(group.done() < count for group in fleet.groups):
            failed = [e for run in runs for e in run.log.events.get("backup.failed", [])]
            if failed:
                raise RuntimeError(f"an agent reported backup.failed: {failed[0]}")
            if time.monotonic() > deadline:
                done = [group.done() for group in fleet.groups]
                raise TimeoutError(f"fleet {fleet.name}: {done} of {count} done after {timeout} s")
            time.sleep(0.05)
        seconds = time.perf_counter() - started
        endpoint_cpu = _cpu(endpoint) - endpoint_before if endpoint else None
        agents_cpu = sum(_cpu(a) for a in agents) - agents_before
        bench_cpu = time.process_time() - bench_before
        proxied = (calls() if calls else Counter()) - calls_before
        for feeder in feeders:
            feeder.join()
        left = {
            group.queue_url: left_in_queue(fleet.setup.clients, group.queue_url)
            for group in fleet.groups
        }
    finally:
        with ThreadPoolExecutor(len(runs)) as pool:
            list(pool.map(AgentRun.stop, runs))
    holders = ledger_holders(fleet.setup.clients, fleet.setup.config.state.table)
    copies = count_copies(
        {obj.key: obj.sha256 for obj in objects},
        [m.volume_root for m in members],
        holders,
        len(fleet.groups),
    )
    return FleetRun(
        len(members) // len(fleet.groups),
        len(fleet.groups),
        count,
        seconds,
        copies,
        endpoint_cpu,
        agents_cpu,
        bench_cpu,
        proxied,
        sum(left.values()),
    )


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def left_in_queue(clients: Clients, queue_url: str, timeout: float = 10.0) -> int:
    """Messages still in the queue (visible or in flight) once every version is done: 0 as
    soon as every message is deleted (not merely processed), else the count at `timeout`
    (the agents delete in batches within 200 ms)."""
    deadline = time.monotonic() + timeout
    while True:
        attrs = clients.sqs.get_queue_attributes(
            QueueUrl=queue_url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        left = sum(int(value) for value in attrs.values())
        if not left:
            return 0
        if time.monotonic() > deadline:
            seen = clients.sqs.receive_message(
                QueueUrl=queue_url,
                MaxNumberOfMessages=10,
                VisibilityTimeout=0,
                MessageSystemAttributeNames=["ApproximateReceiveCount"],
            ).get("Messages", [])
            print(f"  left in {queue_url}: {attrs}")
            for message in seen:
                receives = message.get("Attributes", {}).get("ApproximateReceiveCount")
                print(f"    received {receives} time(s): {message['Body'][:300]}")
            return left
        time.sleep(0.1)


def ledger_holders(clients: Clients, table: str) -> dict[str, list[str]]:
    """Key → the volume ids its version items name (one Scan, not a Query per key)."""
    holders: dict[str, list[str]] = {}
    for page in clients.dynamodb.get_paginator("scan").paginate(TableName=table):
        for item in page["Items"]:
            if not item.get("sk", {}).get("S", "").startswith(VERSION_PREFIX):
                continue
            record = parse_item(item)
            if not isinstance(record, VersionRecord):
                raise RuntimeError(f"ledger item not readable: {record}")
            holders.setdefault(record.key, []).extend(record.holder_volumes())
    return holders


def count_copies(
    expected: Mapping[str, str],
    volume_roots: Iterable[Path],
    holders: Mapping[str, Sequence[str]],
    groups: int = 1,
) -> Copies:
    """For each key → sha256 sent, the volumes holding its copy file, and the journals.

    The objects are distinct, so a copy file on two volumes is one version copied twice.
    """
    volumes = {Volume(root).read_marker().volume_id: Volume(root) for root in volume_roots}
    held = {
        key: [name for name, volume in volumes.items() if volume.has_copy(sha)]
        for key, sha in expected.items()
    }
    journalled: Counter[str] = Counter()
    for volume in volumes.values():
        journalled.update(r.key for r in Journal(volume.journal_dir).read_all() if not r.deleted)
    misplaced = sum(
        1
        for key, named in holders.items()
        if key in held
        for volume_id in named
        if volume_id not in held[key]
    )
    return Copies(
        versions=len(expected),
        copies=sum(len(v) for v in held.values()),
        twice=sum(1 for v in held.values() if len(v) > groups),
        missing=sum(1 for v in held.values() if len(v) < groups),
        journal_twice=sum(1 for key in expected if journalled[key] > groups),
        unrecorded=sum(1 for key in expected if not holders.get(key)),
        misplaced=misplaced,
    )


def section(
    settings: Settings, root: Path, endpoint: Endpoint, report: Report
) -> dict[int, FleetRun]:
    """`python -m bench`'s section 7 (BENCH_ONLY=fleet): a run per fleet size."""
    s = settings
    sizes = sorted(set(s.fleet_agents))
    report.section(
        f"7. fleet: {', '.join(map(str, sizes))} agents on one queue and one table, a volume"
        f" each, every AWS call +{s.fleet_latency_ms:g} ms (proxy)"
    )
    report.text(
        f"{s.fleet_objects} x {s.fleet_kb} KiB objects per agent, {s.fleet_workers} worker(s)"
        f" each, at most {s.fleet_depth} messages outstanding per agent"
    )
    uploads = make_setup(root, endpoint.url, "fleet-upload", bucket=BUCKET, notify=False)
    objects = upload_objects(uploads.clients, sizes[-1] * s.fleet_objects, s.fleet_kb << 10)
    runs: dict[int, FleetRun] = {}
    with FaultProxy(endpoint.url) as proxy:
        proxy.latency = s.fleet_latency_ms / 1000
        tally = MessageTally()
        proxy.observers.append(tally.observe)
        for n in sizes:
            fleet = make_fleet(
                root, endpoint.url, proxy.endpoint, f"fleet-{n}", n, workers=s.fleet_workers
            )
            run = measure(
                fleet,
                objects[: n * s.fleet_objects],
                s.fleet_depth,
                endpoint_pid=endpoint.pid,
                calls=proxy.calls_so_far,
            )
            runs[n] = run
            report.line(f"{n} agent(s)", f"{run.rate:.1f} obj/s", describe(run))
            received, deleted, failed = tally.take()
            report.text(
                f"  messages the agents received / deleted: {received} / {deleted}"
                f" of {run.count}" + (f", {failed} deletes refused" if failed else "")
            )
        replicated = _replicas_run(s, root, endpoint, proxy, objects)
        tally.take()
    first, last = runs[sizes[0]], runs[sizes[-1]]
    ratio = last.rate / first.rate
    target = f"target >= {0.875 * sizes[-1] / sizes[0]:.1f}x"
    report.text(
        f"requests per object through the proxy, {sizes[-1]} agent(s): "
        + ", ".join(f"{op} {n / last.count:.2f}" for op, n in last.calls.most_common())
    )
    report.line(f"{sizes[-1]} agents / {sizes[0]} agent(s)", f"{ratio:.2f}x", target)
    twice = sum(run.copies.twice for run in runs.values())
    journal = sum(run.copies.journal_twice for run in runs.values())
    report.line(
        "versions copied twice (copy files on the volumes)",
        str(twice),
        f"target 0; journals say {journal}",
    )
    report.line(
        f"replicas: 2, {replicated.members} agents in each of 2 groups",
        f"{replicated.rate:.1f} obj/s",
        f"{replicated.copies.exact} of {replicated.count} versions on exactly 2 volumes"
        f" (target all); {replicated.copies.twice} on more, {replicated.copies.missing} on fewer",
    )
    report.add_summary(
        f"fleet {sizes[-1]}/{sizes[0]} agents {ratio:.2f}x"
        f" ({last.rate:.0f} / {first.rate:.0f} obj/s), {twice} copied twice;"
        f" replicas 2: {replicated.copies.exact}/{replicated.count} on exactly 2 volumes"
    )
    return runs


def _replicas_run(
    s: Settings, root: Path, endpoint: Endpoint, proxy: FaultProxy, objects: Sequence[FleetObject]
) -> FleetRun:
    """`fleet.replicas: 2`: two groups of two members, each event fed to both groups' queues
    (as the SNS fan-out does); every version must end on exactly two volumes."""
    fleet = make_fleet(
        root, endpoint.url, proxy.endpoint, "fleet-r2", 2, groups=2, workers=s.fleet_workers
    )
    return measure(
        fleet,
        objects[: 2 * s.fleet_objects],
        s.fleet_depth,
        endpoint_pid=endpoint.pid,
        calls=proxy.calls_so_far,
    )


class MessageTally:
    """Messages the agents received and deleted, read from the answers the proxy forwards."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def observe(self, exchange: Exchange) -> None:
        if exchange.service != "sqs" or exchange.status != 200:
            return
        try:
            answer = json.loads(exchange.response_body or b"{}")
        except ValueError:
            return
        with self._lock:
            if exchange.operation == "ReceiveMessage":
                self._counts["received"] += len(answer.get("Messages", []))
            elif exchange.operation == "DeleteMessageBatch":
                self._counts["deleted"] += len(answer.get("Successful", []))
                self._counts["failed"] += len(answer.get("Failed", []))
            elif exchange.operation == "DeleteMessage":
                self._counts["deleted"] += 1

    def take(self) -> tuple[int, int, int]:
        """(received, deleted, refused) since the last call."""
        with self._lock:
            counts, self._counts = self._counts, Counter()
        return counts["received"], counts["deleted"], counts["failed"]


def describe(run: FleetRun) -> str:
    c = run.copies
    if c.missing or c.unrecorded or c.misplaced:
        raise RuntimeError(
            f"fleet of {run.members}: {c.missing} versions on too few volumes,"
            f" {c.unrecorded} not in the ledger, {c.misplaced} ledger records name a volume"
            " without the copy"
        )
    parts = [f"{run.count} in {run.seconds:.1f} s", f"copied twice {c.twice}"]
    if run.left:
        parts.append(f"{run.left} message(s) still in the queue (moto's count)")
    parts.append(f"requests/object {run.requests / run.count:.2f}")
    cpu = f"CPU s: agents {run.agents_cpu:.1f}, proxy+feeder {run.bench_cpu:.1f}"
    if run.endpoint_cpu is not None:
        cpu += f", endpoint {run.endpoint_cpu:.1f} ({run.endpoint_cpu / run.seconds:.0%} of a CPU)"
    parts.append(cpu)
    return "; ".join(parts)
