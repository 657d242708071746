"""Versions this process recorded lately, so that a duplicate event costs no request.

A message's first receive skips the ledger look-up (agent/pipeline/backup.py); S3's at-least-once
delivery can still hand the same event over in a second message. Remembering the last
`capacity` versions recorded (as 16-byte digests: a key may be 1 KiB) lets the service
answer such a duplicate from memory. A miss is never wrong, only slower: the conditional
ledger write still catches the duplicate after one download. Entries count for `max_age`
(an hour): S3's duplicates arrive close together, and a version expired by retention
meanwhile is then asked of the ledger again.

Memory: each entry is its 16-byte digest and one 40-byte value (the content hash's 32 bytes
and the time remembered), about 210 bytes with the ordered map's own, so the default 65,536
entries hold about 13 MiB once full (they were a tuple of the hex digest and a float: 330
bytes, 21 MiB). `consumer.recent_versions` sets the capacity; 0 turns the memory off.
"""

from __future__ import annotations

import hashlib
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

DEFAULT_CAPACITY = 65_536  # ~13 MiB once full
DEFAULT_MAX_AGE = 3600.0
_REMEMBERED = struct.Struct("=32sd")  # the SHA-256 digest, the clock's reading


class RecentVersions:
    def __init__(
        self,
        capacity: int = DEFAULT_CAPACITY,
        max_age: float = DEFAULT_MAX_AGE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.capacity = capacity
        self.max_age = max_age
        self.clock = clock
        self._sha256: OrderedDict[bytes, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def remember(self, bucket: str, key: str, version_token: str, sha256: str) -> None:
        if self.capacity <= 0:
            return
        try:
            raw = bytes.fromhex(sha256)
        except ValueError:
            return  # not a hex digest: not remembered (a miss is only slower)
        if len(raw) != 32:
            return
        digest = _digest(bucket, key, version_token)
        value = _REMEMBERED.pack(raw, self.clock())
        with self._lock:
            self._sha256[digest] = value
            self._sha256.move_to_end(digest)
            while len(self._sha256) > self.capacity:
                self._sha256.popitem(last=False)

    def sha256_of(self, bucket: str, key: str, version_token: str) -> str | None:
        """The content hash recorded for this version, if this process recorded it lately."""
        with self._lock:
            found = self._sha256.get(_digest(bucket, key, version_token))
        if found is None:
            return None
        sha256, remembered = _REMEMBERED.unpack(found)
        if self.clock() - remembered > self.max_age:
            return None
        return str(sha256.hex())

    def __len__(self) -> int:
        with self._lock:
            return len(self._sha256)


def _digest(bucket: str, key: str, version_token: str) -> bytes:
    joined = f"{len(bucket)}:{bucket}{len(key)}:{key}{version_token}"  # unambiguous
    return hashlib.blake2b(joined.encode("utf-8", "surrogatepass"), digest_size=16).digest()
