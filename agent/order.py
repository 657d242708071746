"""The one order of the versions of a key: `order_key`, a string compared as a string.

What S3 documents, and what this builds on (docs/design.md, "One version order"):

* an event's ``sequencer`` orders the events of one key (right-pad the shorter with
  zeros, then compare); it means nothing across keys, and a listing has none;
* a listed version's ``LastModified`` is a time in whole seconds (for a multipart
  upload it can be when the upload began); an event's ``eventTime`` has milliseconds;
* what is current is S3's own answer (``IsLatest`` in a listing), which reconcile
  applies on top of this order (it may lift a version above others: `after`).

So the key is time first, to the whole second, and inside one second the source's own
order: ``2:<UTC YYYYMMDDTHHMMSS>:<class><value>`` with the classes, in their order,

* ``e`` an event without a sequencer: the microseconds of its time;
* ``s`` an event with one: the sequencer, upper case, right-padded to 64 digits;
* ``v`` a version found by listing the bucket: its microseconds and its rank among
  the key's listed entries (oldest first), so the listing's own order holds.

A correction (`after`) appends ``+`` to the key it must follow. Keys written before this
format (``s<sequencer>`` or ``e<time>``, where every ``s`` sorted after every ``e``) are
rebuilt from the record's time and sequencer when read (`migrated`).
"""

from __future__ import annotations

from datetime import UTC, datetime

FORMAT = "2:"
SEQUENCER_WIDTH = 64


def _second(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y%m%dT%H%M%S")


def event_key(event_time: datetime, sequencer: str | None) -> str:
    """The order key of a change reported by an event (or made up from a time)."""
    if sequencer:
        return f"{FORMAT}{_second(event_time)}:s{sequencer.upper().ljust(SEQUENCER_WIDTH, '0')}"
    return f"{FORMAT}{_second(event_time)}:e{event_time.astimezone(UTC).microsecond:06d}"


def listed_key(last_modified: datetime, rank: int) -> str:
    """The order key of a version found in a listing: `rank` is its place among the key's
    listed entries, oldest first (a listing orders a key's versions; times tie)."""
    micro = last_modified.astimezone(UTC).microsecond
    return f"{FORMAT}{_second(last_modified)}:v{micro:06d}{rank:06d}"


def after(key: str) -> str:
    """A key just after `key` (and before any key that was after it, but for its own
    corrections): where reconcile lifts the version S3 lists as current."""
    return key + "+"


def is_current(key: str | None) -> bool:
    return bool(key) and str(key).startswith(FORMAT)


def migrated(key: str | None, event_time: datetime, sequencer: str | None) -> str:
    """`key` if it is in today's format, else rebuilt from the record's own fields."""
    if key is not None and is_current(key):
        return key
    return event_key(event_time, sequencer)
