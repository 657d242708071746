"""Monkey patches of a library that tests switch off for a while: one helper for all of them.

tests/support/moto_server.py and moto_dynamodb_fast.py each install changes to moto
(`install`, `uninstall`, `installed`); their comparisons with moto as released run inside
`released(...)`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def released(
    installed: Callable[[], bool], install: Callable[[], None], uninstall: Callable[[], None]
) -> Iterator[None]:
    """The library as released while inside; afterwards the patches are as they were before
    (installed again only if they were installed), however the block ends."""
    was = installed()
    uninstall()
    try:
        yield
    finally:
        if was:
            install()
