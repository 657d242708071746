"""Versions this process recorded lately, so that a duplicate event costs no request.

A message's first receive skips the ledger look-up (agent/backup.py); S3's at-least-once
delivery can still hand the same event over in a second message. Remembering the last
`capacity` versions recorded (as 16-byte digests: a key may be 1 KiB) lets the service
answer such a duplicate from memory. A miss is never wrong, only slower: the conditional
ledger write still catches the duplicate after one download.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

DEFAULT_CAPACITY = 65_536  # ~10 MiB at most


class RecentVersions:
    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        self.capacity = capacity
        self._sha256: OrderedDict[bytes, str] = OrderedDict()
        self._lock = threading.Lock()

    def remember(self, bucket: str, key: str, version_token: str, sha256: str) -> None:
        digest = _digest(bucket, key, version_token)
        with self._lock:
            self._sha256[digest] = sha256
            self._sha256.move_to_end(digest)
            while len(self._sha256) > self.capacity:
                self._sha256.popitem(last=False)

    def sha256_of(self, bucket: str, key: str, version_token: str) -> str | None:
        """The content hash recorded for this version, if this process recorded it lately."""
        with self._lock:
            return self._sha256.get(_digest(bucket, key, version_token))

    def __len__(self) -> int:
        with self._lock:
            return len(self._sha256)


def _digest(bucket: str, key: str, version_token: str) -> bytes:
    joined = f"{len(bucket)}:{bucket}{len(key)}:{key}{version_token}"  # unambiguous
    return hashlib.blake2b(joined.encode("utf-8", "surrogatepass"), digest_size=16).digest()
