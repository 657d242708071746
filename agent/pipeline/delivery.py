"""What the consumer knows about the SQS delivery an event arrived in.

The consumer sets it around the processing of each message; the backup service reads it
to skip work only a redelivery needs (the ledger look-up before downloading). A context
variable keeps the processor's one-argument signature; outside a consumer it is unset.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Delivery:
    message_id: str
    receive_count: int

    @property
    def first(self) -> bool:
        """SQS delivers this message for the first time (no earlier attempt can have run)."""
        return self.receive_count <= 1


_current: ContextVar[Delivery | None] = ContextVar("delivery", default=None)


def current() -> Delivery | None:
    return _current.get()


@contextlib.contextmanager
def delivering(delivery: Delivery) -> Iterator[Delivery]:
    token = _current.set(delivery)
    try:
        yield delivery
    finally:
        _current.reset(token)
