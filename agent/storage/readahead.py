"""Read ahead in a thread: the next chunks are produced while the caller uses this one.

Restoring a copy is decompress → hash → write; run in one thread they add up. zstd and
hashlib both release the GIL, so with decompression in a producer thread (at most `depth`
chunks ahead, so memory stays bounded) the hash and the write overlap with it. An error in
the producer is raised in the caller; a caller that stops early stops the producer.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

DEFAULT_DEPTH = 2  # chunks waiting: enough to overlap, a few MiB at most
THREAD_FROM_BYTES = 4 << 20  # below this a thread costs more than it overlaps
_POLL_SECONDS = 0.1


@dataclass(frozen=True, slots=True)
class _Failed:
    error: BaseException


_END = object()


def read_ahead(read: Callable[[], bytes], depth: int = DEFAULT_DEPTH) -> Iterator[bytes]:
    """Yield `read()`'s chunks until it returns b""; `read` runs in its own thread."""
    chunks: queue.Queue[object] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def offer(item: object) -> bool:
        while not stop.is_set():
            try:
                chunks.put(item, timeout=_POLL_SECONDS)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            while data := read():
                if not offer(data):
                    return
            offer(_END)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller, raised there
            offer(_Failed(exc))

    producer = threading.Thread(target=produce, name="read-ahead", daemon=True)
    producer.start()
    try:
        while True:
            item = chunks.get()
            if item is _END:
                return
            if isinstance(item, _Failed):
                raise item.error
            assert isinstance(item, bytes)
            yield item
    finally:
        stop.set()
        producer.join()  # the caller may close what `read` reads from once we return


def chunks(read: Callable[[], bytes], size: int | None) -> Iterator[bytes]:
    """`read()`'s chunks: read ahead in a thread when `size` is large or unknown."""
    if size is not None and size <= THREAD_FROM_BYTES:
        while data := read():
            yield data
        return
    yield from read_ahead(read)
