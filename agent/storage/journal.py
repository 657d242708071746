"""The volume's own record of every version, so the volume alone can be restored.

Append-only JSON lines in daily segments (``journal/YYYY-MM-DD.jsonl``). Each append
is written whole and fsynced before the DynamoDB write, so a version the ledger knows
is always in the journal too. Replaying the journal (`read_all`) rebuilds the ledger.
Appends that finish together share one fsync (group commit, `Journal._commit`): an
append still returns only once its line is durable. `append_many` writes a batch of lines
at once under one fsync (the commit stage's, agent/pipeline/commit.py).

Besides version records the journal holds *notes*: lines with a ``kind`` field
(``"expired"`` when retention forgets a version, ``"scrub"`` for a scrub outcome,
``"order"`` when reconcile gives a version another place in the version order).
`read_all` never yields a note, forgets a version whose last mention is an ``expired``
note, so a replay does not bring expired versions back, and yields a version with the
``order_key`` of an ``order`` note written after it.

The journal is read as untrusted input (the volume may have been tampered with): each line
goes through `parse_line` into a record, a note or a `Rejection` naming its segment and
line. A rejected line is skipped, counted in `Journal.rejections` and logged at error;
the other lines are read as usual. A line longer than `MAX_LINE_BYTES` is rejected
without being held; a segment that is not a regular file (a symlink, a FIFO) is not opened.

A rejected line may be a record damaged by a byte (bit rot, a damaged volume) whose copy
DynamoDB still names, so its rejection carries every digest its bytes may name
(`digests_in`), and gc keeps those copies. Only rejected lines are scanned.

A line torn by a crash or a full disk is followed, at the next append, by a ``torn`` note:
such a line is a write that never completed (its record was retried), skipped without
being counted.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import stat
import threading
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from agent.records import Rejection, Rejections, VersionRecord, digest_named, validated
from agent.storage.volume import fsync_directory

log = structlog.get_logger("agent.journal")

MAX_LINE_BYTES = 1 << 20  # a record is a few KiB at most (2 KiB metadata, a 1 KiB key)
MAX_LINE_DIGESTS = 64  # digests a rejected line's rejection holds at most (`digests_in`)
TORN = "torn"  # the note appended after a line a crash or a full disk cut short
_IDENTITY = ("bucket", "key", "version_token")


@dataclass(frozen=True, slots=True)
class JournalPosition:
    segment: str
    offset: int


@dataclass(frozen=True, slots=True)
class Note:
    """A journal line that is not a version record: ``{"kind": …, …}``."""

    kind: str
    fields: dict[str, Any]


@dataclass(frozen=True, slots=True)
class _TooLong:
    """A line longer than MAX_LINE_BYTES, read through but never held: what `digests_in`
    found in its bytes as they were read."""

    digests: tuple[str, ...]


Entry = VersionRecord | Note | Rejection


def parse_line(raw: bytes, segment: str, line: int, *, notes_only: bool = False) -> Entry | None:
    """One journal line (without its newline) as a record, a note, or why it is neither
    (None for a record line when `notes_only`: it is not examined)."""
    where = f"{segment}:{line}"
    try:
        data = json.loads(raw.decode("utf-8", errors="surrogatepass"))
    except (ValueError, RecursionError):
        return _rejection(raw, where, "not JSON")
    if not isinstance(data, dict):
        return _rejection(raw, where, f"not an object: {type(data).__name__}")
    if "kind" in data:
        problem = _note_problem(data)
        if problem is not None:
            return _rejection(raw, where, problem, digest_named(data))
        return Note(data["kind"], data)
    if notes_only:
        return None
    record = validated(data)
    if isinstance(record, str):
        return _rejection(raw, where, record, digest_named(data))
    return record


def _rejection(raw: bytes, where: str, reason: str, sha256: str | None = None) -> Rejection:
    return Rejection("journal", where, reason, sha256, digests_in(raw))


# A digest as a record writes it, and any run of hex digits as long as one or longer: bit
# rot may have changed the name ("sha256"), a quote around the value (the run grows by a
# digit) or the case of a letter (a→A is one bit), and the copy is still known by the run.
_NAMED_DIGEST = re.compile(rb'"sha256"\s*:\s*"([0-9a-fA-F]{64})"')
_HEX_RUN = re.compile(rb"[0-9a-fA-F]{64,}")
_OVERLAP = 256  # bytes either side of a cut in a long line, scanned together


def digests_in(raw: bytes, found: dict[str, None] | None = None) -> tuple[str, ...]:
    """Every SHA-256 the bytes of a rejected line may name, in lower case: each ``"sha256"``
    value first, then the first and the last 64 digits of each run of 64 hex digits or
    more; at most MAX_LINE_DIGESTS (a record names one; a line that held more was
    tampered with). A digest too many only keeps a copy longer; one missed loses it.
    `found`: those of the line's earlier pieces (a long line's, `_lines_of`), added to."""
    found = {} if found is None else found
    for pattern, group in ((_NAMED_DIGEST, 1), (_HEX_RUN, 0)):
        for match in pattern.finditer(raw):
            run = match.group(group)
            for digest in (run[:64], run[-64:]):
                if len(found) >= MAX_LINE_DIGESTS:
                    return tuple(found)
                found.setdefault(digest.decode("ascii").lower())
    return tuple(found)


def _note_problem(data: Mapping[str, Any]) -> str | None:
    kind = data["kind"]
    if not isinstance(kind, str):
        return "kind is not a string"
    if kind in ("expired", "order"):
        for name in _IDENTITY:
            if not isinstance(data.get(name), str):
                return f"{kind} note: {name} is missing or not a string"
    if kind == "order" and not isinstance(data.get("order_key"), str):
        return "order note: order_key is missing or not a string"
    return None


class Journal:
    def __init__(
        self,
        directory: Path,
        clock: Callable[[], datetime] | None = None,
        rejections: Rejections | None = None,
        *,
        fsync: Callable[[int], None] | None = None,
    ) -> None:
        self.directory = Path(directory)
        self._clock = clock or (lambda: datetime.now(UTC))
        self.rejections = rejections if rejections is not None else Rejections()
        self._fsync = fsync or _fsync  # a seam: tests count the group commits
        self._lock = threading.Lock()  # the writes, and the counters below
        self._sync_lock = threading.Lock()  # one fsync round at a time
        self._written = 0  # lines appended by this process
        self._synced = 0  # lines known durable
        self._pending: dict[str, int] = {}  # segment -> last line written to it, not synced
        self._failed: tuple[int, OSError] | None = None  # lines up to n: their fsync failed
        self._new_segment = False  # a segment was created: its name needs a directory fsync
        # digests the bytes of torn lines name, as read: a crash's cut line is never
        # recorded in the ledger, but the same look has a last line whose newline rotted
        # (then DynamoDB names its copy): gc keeps them too, a copy too many at worst
        self.torn_digests: set[str] = set()
        self._newest: str | None = None  # the newest segment's name (`_segment_for`)

    def append(self, record: VersionRecord) -> JournalPosition:
        return self._append_line(record.to_dict())

    def append_order(self, record: VersionRecord, order_key: str) -> JournalPosition:
        """Note that `record` takes the place `order_key` in its key's version order."""
        return self.append_note(
            "order",
            {
                "bucket": record.bucket,
                "key": record.key,
                "version_token": record.version_token,
                "order_key": order_key,
            },
        )

    def append_note(self, kind: str, fields: dict[str, Any]) -> JournalPosition:
        """Append a note line ``{"kind": kind, **fields}`` (fsynced like a record)."""
        return self._append_line({"kind": kind, **fields})

    def append_many(self, records: Sequence[VersionRecord]) -> list[JournalPosition]:
        """Append the lines of `records` in one write and return once all are durable: one
        fsync for them all (the commit stage's batch, agent/pipeline/commit.py)."""
        if not records:
            return []
        return self._append_lines([record.to_dict() for record in records])

    def _append_line(self, document: dict[str, Any]) -> JournalPosition:
        return self._append_lines([document])[0]

    def _append_lines(self, documents: list[dict[str, Any]]) -> list[JournalPosition]:
        lines = [
            (json.dumps(document, ensure_ascii=False, separators=(",", ":")) + "\n").encode(
                "utf-8", errors="surrogatepass"
            )
            for document in documents
        ]
        data = b"".join(lines)
        name = f"{self._clock().strftime('%Y-%m-%d')}.jsonl"
        with self._lock:
            segment = self.directory / self._segment_for(name)
            created = not segment.exists()
            fd = os.open(segment, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
            try:
                repair = after_torn_tail(fd)
                if repair:  # the torn line is named as such: `read_all` does not count it
                    repair += json.dumps({"kind": TORN}).encode() + b"\n"
                _write_all(fd, repair + data)  # durable at the group commit below
                end = os.lseek(fd, 0, os.SEEK_END)
            except BaseException:
                os.close(fd)
                raise
            self._written += len(lines)
            line_number = self._written
            self._pending[segment.name] = line_number
            self._new_segment = self._new_segment or created
        try:
            self._commit(line_number, segment.name, fd)
        finally:
            os.close(fd)
        positions: list[JournalPosition] = []
        offset = end - len(data)
        for line in lines:  # each line's position: the offset just after it, as `append` says
            offset += len(line)
            positions.append(JournalPosition(segment.name, offset))
        return positions

    def _segment_for(self, name: str) -> str:
        """The segment to append to: today's, or the newest there is if that is later. A
        replay reads segments in name order, so a line appended to an earlier-named segment
        than one holding an ``expired`` note would be read before it, and taken as expired
        though written after (a clock stepped back across midnight)."""
        if self._newest is None:
            self._newest = max((p.name for p in self.directory.glob("*.jsonl")), default="")
        if name < self._newest:
            log.warning("journal.clock_behind", today=name, appending_to=self._newest)
            return self._newest
        self._newest = name
        return name

    def _commit(self, line_number: int, segment: str, fd: int) -> None:
        """Return once line `line_number` is durable (group commit).

        The first appender to get here fsyncs every segment written since the last round,
        covering the lines of every appender that wrote meanwhile; those find their line
        synced and return without an fsync of their own. A failed round fails every line
        it covered (a second fsync could claim success for pages the kernel dropped)."""
        with self._sync_lock:
            if self._failed is not None and line_number <= self._failed[0]:
                exc = self._failed[1]
                raise OSError(exc.errno, f"journal fsync failed: {exc.strerror}")
            if line_number <= self._synced:
                return
            with self._lock:
                through = self._written
                segments, self._pending = self._pending, {}
                new_segment, self._new_segment = self._new_segment, False
            try:
                for name in segments:
                    if name == segment:
                        self._fsync(fd)
                    else:  # another day's segment (written just before midnight)
                        other = os.open(self.directory / name, os.O_RDONLY | os.O_CLOEXEC)
                        try:
                            self._fsync(other)
                        finally:
                            os.close(other)
                if new_segment:  # its name, once a day, after its first line
                    fsync_directory(self.directory)
            except OSError as exc:
                self._failed = (through, exc)
                raise
            self._synced = through

    def position(self) -> JournalPosition | None:
        """The end of the newest segment (what a snapshot taken now contains)."""
        segments = self._segments()
        if not segments:
            return None
        return JournalPosition(segments[-1].name, segments[-1].stat().st_size)

    def read_all(self) -> Iterator[VersionRecord]:
        """Every live record, oldest segment first (expired versions are forgotten).

        A torn last line (crash mid-write) is skipped. A record appended again after its
        ``expired`` note (backed up anew) is live again: the last mention wins. A line that
        is neither a record nor a note is skipped and added to `rejections`.

        Each line is parsed once. A first look over the lines' bytes finds the notes (a
        line is parsed there only when it can be one: `_may_be_note`), so the records are
        then parsed, validated and yielded one at a time, never all held at once.
        """
        expired_at: dict[tuple[str, str, str], int] = {}
        reordered: dict[tuple[str, str, str], tuple[int, str]] = {}
        for index, segment, number, raw in self._numbered_lines():
            if isinstance(raw, _TooLong) or not _may_be_note(raw):
                continue
            entry = parse_line(raw, segment.name, number, notes_only=True)
            if isinstance(entry, Note) and entry.kind == "expired":
                expired_at[_identity(entry.fields)] = index
            elif isinstance(entry, Note) and entry.kind == "order":
                reordered[_identity(entry.fields)] = (index, entry.fields["order_key"])
        for index, entry in self._indexed_entries(notes_only=False):
            if not isinstance(entry, VersionRecord):
                continue
            identity = (entry.bucket, entry.key, entry.version_token)
            if expired_at.get(identity, -1) > index:
                continue
            noted, order_key = reordered.get(identity, (-1, ""))
            yield dataclasses.replace(entry, order_key=order_key) if noted > index else entry

    def expired_after(
        self, position: JournalPosition, identities: Collection[tuple[str, str, str]]
    ) -> set[tuple[str, str, str]]:
        """Which of `identities` (bucket, key, version token) an ``expired`` note appended
        after `position` names: retention expiring a version (note, then its ledger item)
        while the commit stage recorded it again (journal line, then the item) leaves the
        item and a journal that forgot it, and gc would free the copy the item names (a
        review, 2026-12-02).

        Asked after every fresh ledger write, so it reads only what was appended since: one
        lstat when nothing was; else the rest of `position`'s segment (and, past midnight,
        the segments after it, never the older ones), a line parsed only if it holds
        ``"expired"``."""
        wanted = set(identities)
        if not wanted:
            return set()
        if position.segment == f"{self._clock().strftime('%Y-%m-%d')}.jsonl":
            try:
                found_stat = (self.directory / position.segment).lstat()
                if stat.S_ISREG(found_stat.st_mode) and found_stat.st_size <= position.offset:
                    return set()
            except FileNotFoundError:
                pass  # read below, which finds what there is
            segments = [self.directory / position.segment]
        else:  # a day began since: this segment's rest, and the newer ones
            segments = self._segments(since=position.segment)
        found: set[tuple[str, str, str]] = set()
        for segment in segments:
            start = position.offset if segment.name == position.segment else 0
            for _number, raw in _lines_of(segment, start):
                if isinstance(raw, _TooLong) or b'"expired"' not in raw:
                    continue
                try:
                    data = json.loads(raw.decode("utf-8", errors="surrogatepass"))
                except (ValueError, RecursionError):
                    continue
                if not isinstance(data, dict) or data.get("kind") != "expired":
                    continue
                identity = tuple(data.get(name) for name in _IDENTITY)
                if identity in wanted:
                    found.add(identity)
        return found

    def read_notes(self, kind: str | None = None) -> Iterator[dict[str, Any]]:
        """Every note (of `kind`, when given), oldest first."""
        for entry in self.entries():
            if isinstance(entry, Note) and entry.kind != TORN and kind in (None, entry.kind):
                yield entry.fields

    def read_since(self, position: JournalPosition | None) -> Iterator[dict[str, Any]]:
        """Every line that is a JSON object (record or note, as read, unchecked) appended
        after `position`: what gc searches for a digest, where a bad line counts too."""
        for segment in self._segments():
            if position is not None and segment.name < position.segment:
                continue
            start = position.offset if position and segment.name == position.segment else 0
            for _number, raw in _lines_of(segment, start):
                if isinstance(raw, _TooLong):
                    continue
                try:
                    data = json.loads(raw.decode("utf-8", errors="surrogatepass"))
                except (ValueError, RecursionError):
                    continue
                if isinstance(data, dict):
                    yield data

    def entries(self, *, notes_only: bool = False) -> Iterator[Entry | None]:
        """Every line as `parse_line` reads it, oldest first (None for a record line when
        `notes_only`); rejections are also added to `rejections`, torn lines left out."""
        for _index, entry in self._indexed_entries(notes_only=notes_only):
            yield entry

    def _indexed_entries(self, *, notes_only: bool) -> Iterator[tuple[int, Entry | None]]:
        """`entries`, each with the index of its line among all segments' lines."""
        pending: tuple[int, Rejection] | None = None  # not JSON: torn, if a torn note follows
        segment_name = ""
        for index, segment, number, raw in self._numbered_lines():
            if segment.name != segment_name:  # a torn line is followed in its own segment
                if pending is not None:
                    yield pending[0], self._rejected(pending[1])
                pending, segment_name = None, segment.name
            entry = (
                Rejection("journal", f"{segment.name}:{number}", "too long", None, raw.digests)
                if isinstance(raw, _TooLong)
                else parse_line(raw, segment.name, number, notes_only=notes_only)
            )
            if pending is not None and not (isinstance(entry, Note) and entry.kind == TORN):
                yield pending[0], self._rejected(pending[1])
            elif pending is not None:  # torn: not counted, its copy kept all the same
                self.torn_digests.update(pending[1].digests())
            pending = None
            if isinstance(entry, Rejection) and entry.reason == "not JSON":
                pending = (index, entry)
            elif isinstance(entry, Rejection):
                yield index, self._rejected(entry)
            else:
                yield index, entry
        if pending is not None:
            yield pending[0], self._rejected(pending[1])

    def _numbered_lines(self) -> Iterator[tuple[int, Path, int, bytes | _TooLong]]:
        """(index among all lines, segment, line number, bytes) of every whole line."""
        index = 0
        for segment in self._segments():
            for number, raw in _lines_of(segment, 0, self.torn_digests.update):
                yield index, segment, number, raw
                index += 1

    def _rejected(self, rejection: Rejection) -> Rejection:
        self.rejections.add(rejection)
        return rejection

    def _segments(self, since: str = "") -> list[Path]:
        """The segments, oldest first (those named `since` or later, when given)."""
        if not self.directory.is_dir():
            return []
        segments = []
        for path in sorted(self.directory.glob("*.jsonl")):
            if path.name < since:
                continue
            try:
                mode = path.lstat().st_mode
            except FileNotFoundError:
                continue
            if stat.S_ISREG(mode):
                segments.append(path)
            else:
                self.rejections.add(Rejection("journal", path.name, "not a regular file"))
        return segments


def _lines_of(
    segment: Path, start: int, torn: Callable[[tuple[str, ...]], object] | None = None
) -> Iterator[tuple[int, bytes | _TooLong]]:
    """(line number, bytes without the newline) of every whole line from `start`; `_TooLong`
    for a line longer than MAX_LINE_BYTES, never held in memory: read a piece at a time (at
    most MAX_LINE_BYTES + 1 bytes, and the last `_OVERLAP` of the one before), each scanned
    by `digests_in` until it has found MAX_LINE_DIGESTS. A last line without its
    newline is a write still under way or torn by a crash: not yielded, its digests given to
    `torn` (when given: gc keeps them, `Journal.torn_digests`). The file is opened
    without following a symlink or waiting on a FIFO swapped in since the listing."""
    try:
        fd = os.open(segment, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return
        number = 0
        if start:
            handle.seek(start)
            number = -1  # lines are numbered only when read from the start
        while True:
            raw = handle.readline(MAX_LINE_BYTES + 1)
            if not raw:
                return
            number = number + 1 if number >= 0 else -1
            if raw.endswith(b"\n"):
                yield number, raw[:-1]
                continue
            if len(raw) <= MAX_LINE_BYTES:  # the torn or unfinished last line
                if torn is not None:
                    torn(digests_in(raw))
                return
            found: dict[str, None] = {}
            digests_in(raw, found)
            while raw and not raw.endswith(b"\n"):  # the rest of the long line, scanned
                tail, raw = raw[-_OVERLAP:], handle.readline(MAX_LINE_BYTES)
                if len(found) < MAX_LINE_DIGESTS:
                    digests_in(tail + raw[:_OVERLAP], found)  # a digest across the cut
                    digests_in(raw, found)
            if raw:
                yield number, _TooLong(tuple(found))
            elif torn is not None:  # a long last line, unfinished
                torn(tuple(found))


def _may_be_note(raw: bytes) -> bool:
    """Whether a line can be a note, read from its bytes: a JSON object with a ``kind`` member
    holds ``"kind"`` as such, or spelled with an escape (``\\u006b…``), which is then kept
    for `parse_line` too. A line without either is a record or a rejection, never a note."""
    return b'"kind"' in raw or b"\\" in raw


def _identity(data: Mapping[str, Any]) -> tuple[str, str, str]:
    return (str(data.get("bucket")), str(data.get("key")), str(data.get("version_token")))


def _fsync(fd: int) -> None:
    os.fsync(fd)  # looked up at each call (tests patch os.fsync)


def after_torn_tail(fd: int) -> bytes:
    """A newline when the segment ends mid-line (a crash or ENOSPC cut the last append):
    without it the next record would join the torn bytes and be skipped by `read_all`."""
    end = os.lseek(fd, 0, os.SEEK_END)
    if end and os.pread(fd, 1, end - 1) != b"\n":
        return b"\n"
    return b""


def append_line(fd: int, line: bytes) -> None:
    """Append `line` to an O_APPEND file on a line of its own (after a torn tail too), whole:
    a short write (a nearly full disk) continues or raises, never leaves half a record."""
    _write_all(fd, after_torn_tail(fd) + line)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
