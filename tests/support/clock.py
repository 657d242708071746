"""The one fake clock: a datetime the test moves by hand (and `sleep` moves too)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

EPOCH_START = datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)  # 1_700_000_000 s


class FakeClock:
    """`clock()` returns `now`; `advance(...)` and `sleep(s)` move it forward.

    `seconds()` is the same instant as a UNIX timestamp, for code whose clock is a float.
    """

    def __init__(self, start: datetime = EPOCH_START) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def __call__(self) -> datetime:
        return self.now

    def seconds(self) -> float:
        return self.now.timestamp()

    def advance(self, delta: timedelta | None = None, **parts: float) -> None:
        self.now += (delta or timedelta()) + timedelta(**parts)

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += timedelta(seconds=seconds)
