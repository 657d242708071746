"""Finding backed-up versions by more than a key prefix: `backup-restore find`, and the same
filters on `list`, `restore` and `share`.

A `Filter` is one frozen value that says whether a record matches: a keyword on the key
(a case-insensitive substring; a glob, case-sensitive and matching the whole key, when it
holds ``*``, ``?`` or ``[``; or a regular expression), tags (every one must be there),
a content-type prefix, the event time, the size. It knows nothing of where the records
come from: `rows` walks a `RestoreSource` (the ledger or the journal) in key order and
applies the same filter to both, so the online and offline answers are the same records.

What narrows the reading: the `--prefix`, and the literal head of a glob (``reports/*.pdf``
reads only ``reports/``). The other filters are applied to every record read under that
prefix: a DynamoDB Query on the key index, never a Scan (docs/restore.md, "Finding").
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from agent.records import VersionRecord, parse_time
from agent.restore.plan import Plan, readable
from agent.restore.source import Choice, RestoreSource, newest_stored

_GLOB_CHARS = frozenset("*?[")


class FilterError(ValueError):
    """Filter arguments that cannot match anything as written (a bad regex, k=v)."""


@dataclass(frozen=True, slots=True)
class Filter:
    """What a record must be to match. Every field left empty matches everything."""

    keyword: str | None = None  # substring (case-insensitive) or glob (whole key)
    regex: re.Pattern[str] | None = None  # searched anywhere in the key
    tags: tuple[tuple[str, str], ...] = ()  # every pair must be among the record's tags
    content_type: str | None = None  # a prefix, case-insensitive: "image/"
    since: datetime | None = None  # event time at or after
    until: datetime | None = None  # event time before
    min_size: int | None = None
    max_size: int | None = None
    category: str | None = None  # the category recorded at backup (categories: in config)
    _folded: str = field(default="", init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_folded", (self.keyword or "").casefold())

    @classmethod
    def build(
        cls,
        *,
        keyword: str | None = None,
        regex: str | None = None,
        tags: list[str] | None = None,
        content_type: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        min_size: int | None = None,
        max_size: int | None = None,
        category: str | None = None,
    ) -> Filter:
        """A filter from text as an operator types it; `FilterError` says what is wrong."""
        pattern = None
        if regex is not None:
            try:
                pattern = re.compile(regex)
            except re.error as exc:
                raise FilterError(f"--regex {regex!r}: {exc}") from None
        pairs = []
        for tag in tags or []:
            name, sep, value = tag.partition("=")
            if not sep or not name:
                raise FilterError(f"--tag {tag!r}: expected KEY=VALUE")
            pairs.append((name, value))
        if since is not None and until is not None and until <= since:
            raise FilterError("--until must be later than --since")
        if min_size is not None and max_size is not None and max_size < min_size:
            raise FilterError("--max-size is smaller than --min-size")
        return cls(
            keyword=keyword or None,
            regex=pattern,
            tags=tuple(pairs),
            content_type=content_type or None,
            since=since,
            until=until,
            min_size=min_size,
            max_size=max_size,
            category=category or None,
        )

    @property
    def is_glob(self) -> bool:
        return self.keyword is not None and not _GLOB_CHARS.isdisjoint(self.keyword)

    @property
    def empty(self) -> bool:
        return self == Filter()

    def key_prefix(self) -> str:
        """The literal head every matching key starts with ("" when the filter has none)."""
        if not self.is_glob:
            return ""
        assert self.keyword is not None
        head = re.split(r"[*?\[]", self.keyword, maxsplit=1)[0]
        return head

    def matches_key(self, key: str) -> bool:
        if self.keyword is not None:
            if self.is_glob:
                if not fnmatch.fnmatchcase(key, self.keyword):
                    return False
            elif self._folded not in key.casefold():
                return False
        return self.regex is None or self.regex.search(key) is not None

    def matches(self, record: VersionRecord) -> bool:
        """Does `record` match? A record that lacks what a filter asks about (no tags
        recorded, no size: a deletion) does not match that filter."""
        if not self.matches_key(record.key):
            return False
        if self.tags and not _has_tags(record.tags, self.tags):
            return False
        if self.content_type is not None and not (record.content_type or "").casefold().startswith(
            self.content_type.casefold()
        ):
            return False
        if self.category is not None and record.category != self.category:
            return False
        if self.since is not None or self.until is not None:
            when = parse_time(record.event_time)
            if self.since is not None and when < self.since:
                return False
            if self.until is not None and when >= self.until:
                return False
        if self.min_size is not None or self.max_size is not None:
            if record.size is None or record.deleted:
                return False
            if self.min_size is not None and record.size < self.min_size:
                return False
            if self.max_size is not None and record.size > self.max_size:
                return False
        return True


def _has_tags(tags: Mapping[str, str] | None, wanted: tuple[tuple[str, str], ...]) -> bool:
    return tags is not None and all(tags.get(name) == value for name, value in wanted)


def scope_prefix(prefix: str, only: Filter) -> str | None:
    """The prefix to read: the longer of `prefix` and the glob's literal head, or None
    when the two cannot both hold (nothing can match)."""
    head = only.key_prefix()
    if head.startswith(prefix):
        return head
    if prefix.startswith(head):
        return prefix
    return None


@dataclass(frozen=True, slots=True)
class Row:
    """One answer: a record, and whether its key is absent in S3 (`deleted`)."""

    record: VersionRecord
    deleted: bool
    deleted_at: str | None = None  # the key's deletion, when a deleted key shows its last copy


@dataclass
class Scan:
    """The running count of a search; `tick` (a progress line) is called every `every` keys."""

    tick: Callable[[Scan], None] | None = None
    every: int = 1000
    keys: int = 0
    matches: int = 0

    def key_read(self) -> None:
        self.keys += 1
        if self.tick is not None and self.keys % self.every == 0:
            self.tick(self)


def rows(
    source: RestoreSource,
    buckets: list[str],
    *,
    prefix: str = "",
    only: Filter | None = None,
    versions: bool = False,
    deleted: bool = False,
    after: tuple[str, str] | None = None,
    scan: Scan | None = None,
) -> Iterator[Row]:
    """Every matching row in (bucket, key, version order) order.

    Without `versions`, one row per key: the version S3 serves (an archived version backed
    up later shows as that backup), or with `deleted` the last version of a key deleted in
    S3. With `versions`, every record of every key (deletions included). Keys deleted in
    S3 are left out unless `deleted`. `after` = (bucket, key): resume after that key."""
    only = only or Filter()
    scan = scan or Scan()
    prefix_to_read = scope_prefix(prefix, only)
    if prefix_to_read is None:
        return
    for bucket in sorted(buckets):
        if after is not None and bucket < after[0]:
            continue
        resume = after[1] if after is not None and bucket == after[0] else ""
        for latest in source.latest(bucket, prefix_to_read, resume):
            scan.key_read()
            if latest.deleted and not deleted:
                continue
            if not only.matches_key(latest.key):
                continue  # the cheap test first: no history read for a key that cannot match
            for row in _key_rows(source, bucket, latest, versions):
                if only.matches(row.record):
                    scan.matches += 1
                    yield row


def _key_rows(
    source: RestoreSource, bucket: str, latest: VersionRecord, versions: bool
) -> Iterator[Row]:
    if versions:
        for record in source.history(bucket, latest.key):
            yield Row(record, record.deleted)
    elif latest.deleted:
        stored = newest_stored(source.history(bucket, latest.key))
        yield Row(stored or latest, True, latest.event_time)
    else:
        yield Row(_readable(source, bucket, latest), False)


def _readable(source: RestoreSource, bucket: str, latest: VersionRecord) -> VersionRecord:
    """An archived version backed up later shows as the backed-up record (plan.readable)."""
    if not latest.unreadable:
        return latest
    return readable(source, bucket, Choice(latest.key, latest)).record or latest


def narrowed(chosen: Plan, only: Filter) -> Plan:
    """A restore plan keeping only the versions that match (`restore` with filters); the
    keys left out for another reason stay reported when their key matches."""
    if only.empty:
        return chosen
    return Plan(
        [item for item in chosen.items if only.matches(item.record)],
        skipped=[c for c in chosen.skipped if only.matches_key(c.key)],
        missing=chosen.missing,
    )
