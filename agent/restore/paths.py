"""S3 keys → safe relative paths under a restore directory.

A key is split on ``/``; each part becomes one path component. Parts that cannot be a
safe component are escaped, never dropped, so nothing is written outside the target:

* an empty part (leading ``/``, ``a//b``, trailing ``/``) becomes ``%``;
* ``.`` becomes ``%2E`` and ``..`` becomes ``%2E%2E``;
* a part of the form of a restore's temp names (``.restore-0123456789ab-7.part``,
  durable.py) has its dot escaped the same way (``%2Erestore-0123456789ab-7.part``): a later
  restore into its directory removes a stale temp file of that name, so no restored file
  may have one;
* a lone surrogate (U+D800 to U+DFFF: no S3 key holds one, but a record read from the
  journal may, JSON ``"\\ud800"``) becomes the ``%XX`` of its three bytes as Python's
  ``surrogatepass`` writes them (``\\ud800`` → ``%ED%A0%80``): as it is, it is no file
  name (``os.fsencode`` fails on it, or writes U+DC80 to U+DCFF as a lone byte 0x80 to 0xFF,
  which is no UTF-8);
* a part longer than 255 bytes (NAME_MAX, once escaped) is cut to 200 bytes plus ``~`` and
  16 hex digits of the part's SHA-256.

Keys that still collide on a filesystem — ``a`` (a file) and ``a/b`` (needs a directory
``a``), or two keys escaping to one name — are all kept: the file gives way and gets
the suffix ``~`` + 12 hex digits of the key's SHA-256. Every changed path is reported.

The parts are only ever used one component at a time, relative to the descriptor of the
directory above (tree.py); `Placement.relative` is for messages.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass

from agent.restore.durable import TEMP_PREFIX, is_temp_name

NAME_MAX = 255
LONG_PART_KEEP = 200
EMPTY_PART = "%"
ESCAPED_PARTS = {".": "%2E", "..": "%2E%2E"}
ESCAPED_DOT = ESCAPED_PARTS["."]
SURROGATE = re.compile("[\ud800-\udfff]")

Parts = tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Placement:
    """Where one key lands: path components relative to the restore directory."""

    key: str
    parts: Parts
    escaped: bool = False  # a part had to be escaped
    collided: bool = False  # renamed to avoid another key's file or directory

    @property
    def relative(self) -> str:
        return "/".join(self.parts)

    @property
    def renamed(self) -> bool:
        return self.escaped or self.collided


def escape_part(part: str) -> str:
    """One key part → one safe file-name component."""
    if part == "":
        return EMPTY_PART
    if part in ESCAPED_PARTS:
        return ESCAPED_PARTS[part]
    # the common part (short, ASCII, no leading ".restore-") costs three string tests
    name = ESCAPED_DOT + part[1:] if part.startswith(TEMP_PREFIX) and is_temp_name(part) else part
    if not name.isascii():
        name = SURROGATE.sub(_percent, name)
    if len(name) * 4 <= NAME_MAX:  # at most 4 UTF-8 bytes a character: no encoding needed
        return name
    raw = name.encode("utf-8")
    if len(raw) > NAME_MAX:
        digest = hashlib.sha256(part.encode("utf-8", errors="surrogatepass")).hexdigest()[:16]
        return _cut(raw, LONG_PART_KEEP) + "~" + digest
    return name


def key_parts(key: str) -> tuple[Parts, bool]:
    """The escaped parts of `key` and whether any part changed."""
    parts = tuple(escape_part(part) for part in key.split("/"))
    return parts, parts != tuple(key.split("/"))


def place_keys(keys: Iterable[str]) -> dict[str, Placement]:
    """A collision-free placement for every key (deterministic: keys in sorted order)."""
    ordered = sorted(set(keys))
    wanted = {key: key_parts(key) for key in ordered}
    directories = {parts[:i] for parts, _ in wanted.values() for i in range(1, len(parts))}
    taken: set[Parts] = set()
    placements: dict[str, Placement] = {}
    for key in ordered:
        parts, escaped = wanted[key]
        collided = parts in directories or parts in taken
        attempt = 0
        while parts in directories or parts in taken:
            parts = (*parts[:-1], _suffixed(wanted[key][0][-1], key, attempt))
            attempt += 1
        taken.add(parts)
        placements[key] = Placement(key, parts, escaped=escaped, collided=collided)
    return placements


def _suffixed(name: str, key: str, attempt: int) -> str:
    suffix = "~" + hashlib.sha256(key.encode("utf-8", errors="surrogatepass")).hexdigest()[:12]
    if attempt:
        suffix += f"-{attempt}"
    raw = name.encode("utf-8", errors="surrogatepass")
    return _cut(raw, NAME_MAX - len(suffix)) + suffix


def _percent(found: re.Match[str]) -> str:
    return "".join(f"%{byte:02X}" for byte in found[0].encode("utf-8", errors="surrogatepass"))


def _cut(raw: bytes, limit: int) -> str:
    """The longest prefix of `raw` within `limit` bytes that is still whole characters."""
    return raw[:limit].decode("utf-8", errors="ignore")
