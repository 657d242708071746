"""moto's DynamoDB writes one at a time: each one atomic with its condition, as DynamoDB's are.

DynamoDB applies each write atomically, its condition included ("Individual write operations
such as UpdateItem are atomic", the developer guide's best practices for concurrent updates;
a transaction's writes all or none). moto 5.2.5 reads the current item, checks the condition
and then writes, without a lock (`Table.put_item`): two requests served at once (moto_server
answers each in a thread of its own; in-process, each caller's thread runs moto) can both
pass a condition only one of them may pass. The fleet's version claim is such a condition:
`tests/e2e/test_fleet_replicas_process.py` failed on 2026-12-02 01:22 when both replica
groups created the first versions at once and the later write replaced the earlier one, its
holder lost (each version must be held by both groups; five were held by one).

Installed, moto's handlers of the write operations (PutItem, UpdateItem, DeleteItem,
BatchWriteItem, TransactWriteItems and the PartiQL statements) run one at a time, under one
lock for every table: DynamoDB's own per-item atomicity, more coarsely. Reads are left
alone. `install()` is called by tests/support/moto_server.py's `install()`;
tests/unit/test_moto_dynamodb_writes.py makes two conditional PutItems meet between the
read and the write: on moto as released both succeed, with this installed one does.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any

from moto.dynamodb.responses import DynamoHandler

from tests.support import patching

WRITES = (
    "put_item",
    "update_item",
    "delete_item",
    "batch_write_item",
    "transact_write_items",
    "execute_statement",
    "execute_transaction",
    "batch_execute_statement",
)
_MOTO: dict[str, Callable[..., Any]] = {name: getattr(DynamoHandler, name) for name in WRITES}
_writing = threading.RLock()  # reentrant: a handler that calls another stays whole
_installed = False


def _one_at_a_time(original: Callable[..., Any]) -> Callable[..., Any]:
    def write(self: DynamoHandler, *args: Any, **kwargs: Any) -> Any:
        with _writing:
            return original(self, *args, **kwargs)

    write.__name__ = original.__name__
    write.__doc__ = original.__doc__
    return write


def installed() -> bool:
    return _installed


def install() -> None:
    global _installed
    for name, original in _MOTO.items():
        setattr(DynamoHandler, name, _one_at_a_time(original))
    _installed = True


def uninstall() -> None:
    global _installed
    for name, original in _MOTO.items():
        setattr(DynamoHandler, name, original)
    _installed = False


def as_released() -> contextlib.AbstractContextManager[None]:
    """moto as released while inside (as it was after)."""
    return patching.released(installed, install, uninstall)
