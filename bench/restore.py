"""Scenario 3: restore speed of stored copies, next to `zstd -d` on the same copies.

The headline is what an operator runs: `backup-restore restore` (one process: start-up,
DynamoDB look-ups, decompression, SHA-256 check, fsync of each file) for the large key and
for every small one (`--all`). Beside it, `VolumeRestorer` shows decompression alone
through `Volume.copy_chunks`, in this process. `Restorer` is the hook for anything else:
BENCH_RESTORE_CMD takes a command template per copy (placeholders: config, bucket, key,
sha256, dest).
"""

from __future__ import annotations

import compileall
import json
import os
import pickle
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

from agent.restore.durable import Barriers
from agent.storage.volume import Volume
from bench.small import round_order
from bench.timing import run_timed

TARGET_SMALL_RESTORE = 0.33  # issue 19: restore of many small files >= 0.33x zstd -d --filelist
TARGET_LARGE_RESTORE = 0.8  # issue 19: restore of the large copy >= 0.8x zstd -d


def cpu_budget(reference_seconds: float, ratio: float, cpus: int) -> float:
    """The CPU seconds a run may use and still reach `ratio` of a reference that took
    `reference_seconds`: every CPU busy for the whole of the time the ratio allows.

    Against the local stand-in the endpoint's CPU comes out of the same budget (one
    machine), so when `backup-restore`'s CPU plus the endpoint's is above it, no ordering of
    the work reaches the ratio here; real DynamoDB's work is done elsewhere."""
    if reference_seconds <= 0 or ratio <= 0 or cpus < 1:
        raise ValueError("cpu_budget needs a positive reference time, ratio and CPU count")
    return reference_seconds / ratio * cpus


def least_time(
    start: float, cpu: float, cpus: int, serial: float = 0.0, serial_cpu: float | None = None
) -> float:
    """The least wall time a run that used `cpu` CPU seconds could take on `cpus` CPUs in
    any order of its work: its `start` (the interpreter and imports: one CPU, and nothing
    else can run before the command knows what it is to do), then work that must also be
    done before the rest can start (`serial` seconds at best, `JournalRead.serial`; it
    used `serial_cpu` of the run's CPU, `serial` unless given), then the rest of its CPU
    on every CPU at once. Above the time a target allows, no reordering reaches the target
    on this machine: only less CPU."""
    before = serial if serial_cpu is None else serial_cpu
    if cpus < 1 or min(start, cpu, serial, before) < 0:
        raise ValueError("least_time needs a CPU and no negative time")
    return start + serial + max(0.0, cpu - start - before) / cpus


@dataclass(frozen=True)
class JournalRead:
    """What an offline restore must do before it can place its first file, measured in
    this process: the journal's records read, checked and replayed (`JournalSource`,
    `read`), and what handing those records to another process would cost (`pickle`,
    `unpickle`). CPU seconds, medians of a few runs."""

    records: int
    read: float
    pickle: float
    unpickle: float

    def serial(self, cpus: int) -> float:
        """The least time on `cpus` CPUs before the first file can be placed (a file's
        place and version depend on every record: paths.py, history.py): the read on one
        CPU, or split over every CPU with the records then pickled on every CPU and
        unpickled by the one process that places them, whichever is less."""
        if cpus < 1:
            raise ValueError("serial needs a CPU")
        return min(self.read, (self.read + self.pickle) / cpus + self.unpickle)


def journal_read(journal_dir: Path, runs: int = 3) -> JournalRead:
    """`JournalRead` of the journal in `journal_dir` (CPU time: a busy machine stretches
    wall time, not the work)."""
    from agent.restore.source import JournalSource
    from agent.storage.journal import Journal

    reads: list[float] = []
    pickles: list[float] = []
    unpickles: list[float] = []
    records = 0
    for _ in range(max(1, runs)):
        started = time.process_time()
        JournalSource(Journal(journal_dir))
        reads.append(time.process_time() - started)
        every = list(Journal(journal_dir).read_all())
        records = len(every)
        started = time.process_time()
        data = pickle.dumps(every, protocol=pickle.HIGHEST_PROTOCOL)
        pickles.append(time.process_time() - started)
        started = time.process_time()
        pickle.loads(data)
        unpickles.append(time.process_time() - started)
    return JournalRead(
        records,
        statistics.median(reads),
        statistics.median(pickles),
        statistics.median(unpickles),
    )


@dataclass(frozen=True)
class Copy:
    sha256: str
    size: int
    bucket: str = ""
    key: str = ""


class Restorer(Protocol):
    name: str

    def restore(self, copy: Copy, dest: Path) -> None: ...


class VolumeRestorer:
    """Decompress a copy to a file with `Volume.copy_chunks`, as a restore does (a copy
    stored as frames on every core), without hashing or flushing."""

    name = "Volume.copy_chunks, decompression only"

    def __init__(self, volume: Volume) -> None:
        self.volume = volume

    def restore(self, copy: Copy, dest: Path) -> None:
        with dest.open("wb") as out:
            for chunk in self.volume.copy_chunks(copy.sha256, copy.size):
                out.write(chunk)


class CommandRestorer:
    """Any restore command, from a template (see the module docstring)."""

    def __init__(self, template: str, config: Path) -> None:
        self.template = template
        self.config = config
        self.name = template.split()[0]

    def restore(self, copy: Copy, dest: Path) -> None:
        command = self.template.format(
            config=self.config, bucket=copy.bucket, key=copy.key, sha256=copy.sha256, dest=dest
        )
        subprocess.run(shlex.split(command), check=True, stdout=subprocess.DEVNULL)


@dataclass(frozen=True)
class Timing:
    seconds: float
    cpu: float  # CPU seconds of whoever did the work (this process, or the child)
    # `backup-restore`'s own phases, from its log: seconds from the command's start to its
    # `restore.started` line (interpreter, imports, the records read and checked, the plan,
    # the plan's directories made and the worker processes forked), and from there to
    # `restore.finished` (the files)
    first_file: float | None = None
    files: float | None = None


def phases(log: bytes, started: float) -> tuple[float | None, float | None]:
    """(first_file, files) from a `backup-restore` run's JSON log lines (`started`: the
    wall-clock time, time.time(), the command was started at); None where a line is
    missing (a run whose level hides INFO, or a log that is not JSON lines)."""
    seen: dict[str, float] = {}
    for line in log.splitlines():
        try:
            event = json.loads(line)
            seen.setdefault(event["event"], datetime.fromisoformat(event["timestamp"]).timestamp())
        except (ValueError, KeyError, TypeError):
            continue
    begun, ended = seen.get("restore.started"), seen.get("restore.finished")
    return (
        None if begun is None else begun - started,
        None if begun is None or ended is None else ended - begun,
    )


def median_timing(timings: Sequence[Timing]) -> Timing:
    """The median time and the median CPU of several runs of one kind (each its own median:
    they need not come from the same run)."""
    if not timings:
        raise ValueError("median_timing needs at least one run")
    return Timing(
        statistics.median(t.seconds for t in timings),
        statistics.median(t.cpu for t in timings),
        _median_of(t.first_file for t in timings),
        _median_of(t.files for t in timings),
    )


def _median_of(values: Iterable[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def settled() -> None:
    """Nothing dirty left in the page cache: what an earlier run wrote (and its removal) is
    on the disk before the next run starts, so no run pays for another's writeback."""
    os.sync()


def run_rounds(
    runs: Mapping[str, Callable[[Path], Timing]],
    rounds: int,
    target: Path,
    *,
    before: Callable[[str], None] = lambda _kind: settled(),
    after: Callable[[str, Path], None] = lambda _kind, _out: None,
) -> list[dict[str, Timing]]:
    """Each run of `runs` once per round, the order reversed every other round
    (`small.round_order`), each into a directory of its own under `target` (`before` readies
    the machine for it, `after` checks it). Nothing is removed: the runs' files stay until
    the benchmark's working directory goes at its end (`target` is removed here only when a
    run fails).

    Why: on an ext4 without a journal (this machine's root, 2026-12-02) the inode allocator
    skips each inode freed in the last 60 s (360 s while its inode-table block is dirty),
    looking that block up in the buffer cache for every free inode it passes
    (`recently_deleted`, fs/ext4/ialloc.c). A run right after 10,000 files were removed then
    paid that per file created: a restore by two processes and the parent, which wait on the
    directory's lock while one scans, 1.7x slower; `zstd -d` (one process) 0.8-1.9x. That
    measured the removal before, not the run; and a removal at the end of the section would
    land on the sections after it."""
    timings: list[dict[str, Timing]] = []
    try:
        for index in range(rounds):
            timings.append({})
            for kind in round_order(index, list(runs)):
                out = target / f"{kind}-{index}"
                before(kind)
                timings[-1][kind] = runs[kind](out)
                after(kind, out)
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise
    return timings


def restore_all(restorer: Restorer, copies: Sequence[Copy], target: Path) -> Timing:
    """Restore every copy into `target`. Checks the sizes afterwards."""
    target.mkdir(parents=True, exist_ok=True)
    cpu = _cpu(resource.RUSAGE_SELF) + _cpu(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    for index, copy in enumerate(copies):
        restorer.restore(copy, target / f"{index:05d}")
    seconds = time.perf_counter() - started
    cpu = _cpu(resource.RUSAGE_SELF) + _cpu(resource.RUSAGE_CHILDREN) - cpu
    for index, copy in enumerate(copies):
        if (target / f"{index:05d}").stat().st_size != copy.size:
            raise RuntimeError(f"{restorer.name} restored the wrong size for {copy.sha256}")
    return Timing(seconds, cpu)


def _cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def zstd_decompress_all(volume: Volume, copies: Sequence[Copy], target: Path) -> Timing:
    """`zstd -d` of the same copies into `target` (one process; many files via --filelist)."""
    target.mkdir(parents=True, exist_ok=True)
    cpu = _cpu(resource.RUSAGE_CHILDREN)
    if len(copies) == 1:
        path = volume.copy_path(copies[0].sha256)
        command = ["zstd", "-d", "-q", "-f", str(path), "-o", str(target / "00000")]
    else:
        filelist = target.parent / f"{target.name}.filelist"
        filelist.write_text("".join(f"{volume.copy_path(c.sha256)}\n" for c in copies))
        command = [
            "zstd",
            "-d",
            "-q",
            "-f",
            "--filelist",
            str(filelist),
            "--output-dir-flat",
            str(target),
        ]
    seconds = run_timed(command)
    return Timing(seconds, _cpu(resource.RUSAGE_CHILDREN) - cpu)


def drop_cached(path: Path) -> None:
    """Evict the file's pages from the page cache (POSIX_FADV_DONTNEED drops the clean ones;
    a stored copy was fsynced when stored), so each restore of it reads it from the disk.
    Section 3 does this before every large restore it times: before 2026-12-01 the first one
    (`backup-restore`) read the copy cold and the references after it read it from the cache
    the restore had just filled."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def zstd_decompress_durable(volume: Volume, copies: Sequence[Copy], target: Path) -> Timing:
    """`zstd -d` of the copies, then their output made durable, timed together: the same
    work a restore must finish before it reports success (the bytes on the disk). For one
    copy an fsync of its output; for many, one syncfs of the target's filesystem once zstd
    is done (a restore of many files syncs its filesystem per batch, durable.py). A second
    reference beside plain `zstd -d`; the targets stay against plain `zstd -d`."""
    zstd = zstd_decompress_all(volume, copies, target)  # timed as plain zstd -d is
    cpu = _cpu(resource.RUSAGE_SELF)  # the flush's system time is this process's
    started = time.perf_counter()
    fd = os.open(target / "00000" if len(copies) == 1 else target, os.O_RDONLY)
    try:
        barriers = Barriers()
        if len(copies) == 1:
            os.fsync(fd)
        elif barriers.whole_filesystem:
            barriers.sync_filesystem(fd)
        else:  # pragma: no cover - Linux has syncfs
            os.sync()
    finally:
        os.close(fd)
    flushed = time.perf_counter() - started
    return Timing(zstd.seconds + flushed, zstd.cpu + _cpu(resource.RUSAGE_SELF) - cpu)


def compile_agent() -> None:
    """Write the agent's bytecode, as `pip install` of the wheel (scripts/install.sh) does.

    A development checkout is installed editable, and where PYTHONDONTWRITEBYTECODE is set
    (this machine's shells) every `backup-restore` start compiled the agent's ~80 modules
    from source again: 0.27 s of each run (cProfile), which no installed agent pays."""
    import agent

    compileall.compile_dir(Path(agent.__file__).parent, quiet=1)


def cli_start(runs: int = 3) -> Timing:
    """`backup-restore --version`'s wall time and CPU, each the median of `runs`: the
    interpreter and every import the command makes before it reads a record."""
    compile_agent()
    command = [str(Path(sys.executable).with_name("backup-restore")), "--version"]
    timings = []
    for _ in range(runs):
        cpu, started = _cpu(resource.RUSAGE_CHILDREN), time.perf_counter()
        subprocess.run(command, stdout=subprocess.DEVNULL, check=True)
        timings.append(Timing(time.perf_counter() - started, _cpu(resource.RUSAGE_CHILDREN) - cpu))
    return median_timing(timings)


def restore_cli(config: Path, scope: Sequence[str], target: Path) -> Timing:
    """`backup-restore restore --config CONFIG SCOPE --to TARGET`, timed end to end."""
    compile_agent()  # not timed; a no-op once compiled
    command = [
        str(Path(sys.executable).with_name("backup-restore")),
        "restore",
        "--config",
        str(config),
        *scope,
        "--to",
        str(target),
    ]
    cpu = _cpu(resource.RUSAGE_CHILDREN)
    with tempfile.TemporaryFile() as log:
        wall, started = time.time(), time.perf_counter()
        done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=log, check=False)
        seconds = time.perf_counter() - started
        log.seek(0)
        lines = log.read()
    if done.returncode != 0:
        tail = lines[-2000:].decode(errors="replace")
        raise RuntimeError(f"{' '.join(command)} exited {done.returncode}:\n{tail}")
    first_file, files = phases(lines, wall)
    return Timing(seconds, _cpu(resource.RUSAGE_CHILDREN) - cpu, first_file, files)
