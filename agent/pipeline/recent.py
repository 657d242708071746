"""Versions this process recorded lately, so that a duplicate event costs no request.

A message's first receive skips the ledger look-up (agent/pipeline/backup.py); S3's at-least-once
delivery can still hand the same event over in a second message. Remembering the last
`capacity` versions recorded (as 16-byte digests: a key may be 1 KiB) lets the service
answer such a duplicate from memory. A miss is never wrong, only slower: the conditional
ledger write still catches the duplicate after one download. Entries count for `max_age`
(an hour): S3's duplicates arrive close together, and a version expired by retention
meanwhile is then asked of the ledger again.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

DEFAULT_CAPACITY = 65_536  # ~10 MiB at most
DEFAULT_MAX_AGE = 3600.0


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
        self._sha256: OrderedDict[bytes, tuple[str, float]] = OrderedDict()
        self._lock = threading.Lock()

    def remember(self, bucket: str, key: str, version_token: str, sha256: str) -> None:
        digest = _digest(bucket, key, version_token)
        with self._lock:
            self._sha256[digest] = (sha256, self.clock())
            self._sha256.move_to_end(digest)
            while len(self._sha256) > self.capacity:
                self._sha256.popitem(last=False)

    def sha256_of(self, bucket: str, key: str, version_token: str) -> str | None:
        """The content hash recorded for this version, if this process recorded it lately."""
        with self._lock:
            found = self._sha256.get(_digest(bucket, key, version_token))
        if found is None or self.clock() - found[1] > self.max_age:
            return None
        return found[0]

    def __len__(self) -> int:
        with self._lock:
            return len(self._sha256)


def _digest(bucket: str, key: str, version_token: str) -> bytes:
    joined = f"{len(bucket)}:{bucket}{len(key)}:{key}{version_token}"  # unambiguous
    return hashlib.blake2b(joined.encode("utf-8", "surrogatepass"), digest_size=16).digest()
