"""moto_server, with one cost of moto's TransactWriteItems taken out (the local AWS stand-in).

moto 5.2.5 makes a transaction undoable by deep-copying every table it names, once per
action, before running it (`DynamoDBBackend.transact_write_items`), so one transaction costs
time in proportion to the table: 50 records (100 actions) took about 1 s on an empty table
and 277 s on one of 10,000 items here (docs/testing.md). Real DynamoDB does no such thing.
With it, any benchmark of the agent's ledger transactions measures moto's copies.

`install()` (or `touched_items_only()`) keeps moto's code and its answers, and changes what
the undo keeps: the items the transaction's actions name, read before it runs and put back
(or deleted, where there was none) if it raises. moto's own whole-table "copy" becomes the
table itself while it is installed. The answers are the same: tests/unit/test_moto_server.py
runs the same transactions with and without it and compares every item.

`python -m tests.support.moto_server -H 127.0.0.1 -p PORT` is moto_server with it installed;
tests/support/local_aws.py starts that for `make demo`, the e2e tests and the benchmarks.
tests/conftest.py installs it for the in-process tests too: moto's whole-table copy also
iterates a table while another thread writes to it, and fails the transaction with
"dictionary changed size during iteration" (two daemons on one table, 2026-12-01).
"""

from __future__ import annotations

import contextlib
import copy
import sys
from collections.abc import Iterator
from typing import Any

from moto.dynamodb import models as dynamodb_models
from moto.dynamodb.models import DynamoDBBackend
from moto.dynamodb.models.dynamo_type import Item
from moto.dynamodb.models.table import Table

from tests.support import moto_dynamodb_fast


class _TablesByReference:
    """What `moto.dynamodb.models` calls `copy` while installed: a table is kept by
    reference (the undo is done by `_undo`), anything else deep-copied as before."""

    @staticmethod
    def deepcopy(value: Any, memo: dict[int, Any] | None = None) -> Any:
        if isinstance(value, Table):
            return value
        return copy.deepcopy(value, memo)


Touched = tuple[str, dict[str, Any], Item | None]


def _touched(backend: DynamoDBBackend, transact_items: list[dict[str, Any]]) -> list[Touched]:
    """Each action's table, key and item as it is before the transaction (None: absent)."""
    touched: list[Touched] = []
    for action in transact_items:
        for operation, request in action.items():
            name = request.get("TableName")
            if not isinstance(name, str) or name not in backend.tables:
                continue
            table = backend.tables[name]
            if operation == "Put":
                attrs = request.get("Item", {})
                names = [table.hash_key_attr, table.range_key_attr]
                if any(n is not None and n not in attrs for n in names):
                    continue  # moto refuses it before writing anything
                key = {n: attrs[n] for n in names if n is not None}
            else:
                key = request.get("Key", {})
            try:
                item = backend.get_item(name, key)
            except Exception:  # a key moto refuses: it writes nothing for it
                continue
            touched.append((name, key, copy.deepcopy(item)))
    return touched


def _undo(backend: DynamoDBBackend, touched: list[Touched]) -> None:
    for name, key, item in reversed(touched):  # the first read of a key is the oldest
        if item is None:
            backend.delete_item(name, key)
        else:
            backend.put_item(name, item.to_json()["Attributes"])


_MOTO_TRANSACT = DynamoDBBackend.transact_write_items
_MOTO_COPY = dynamodb_models.copy


def _transact_write_items(self: DynamoDBBackend, transact_items: list[dict[str, Any]]) -> None:
    touched = _touched(self, transact_items)
    try:
        _MOTO_TRANSACT(self, transact_items)
    except Exception:
        _undo(self, touched)
        raise


def installed() -> bool:
    return DynamoDBBackend.transact_write_items is _transact_write_items  # type: ignore[comparison-overlap]


def install() -> None:
    """Install the change (see the module docstring) in this process."""
    DynamoDBBackend.transact_write_items = _transact_write_items  # type: ignore[method-assign]
    dynamodb_models.copy = _TablesByReference  # type: ignore[assignment]
    moto_dynamodb_fast.install()  # two more moto costs out: see that module


def uninstall() -> None:
    DynamoDBBackend.transact_write_items = _MOTO_TRANSACT  # type: ignore[method-assign]
    dynamodb_models.copy = _MOTO_COPY


@contextlib.contextmanager
def touched_items_only() -> Iterator[None]:
    """The change installed while inside (as it was after)."""
    was = installed()
    install()
    try:
        yield
    finally:
        if not was:
            uninstall()


@contextlib.contextmanager
def as_released() -> Iterator[None]:
    """moto as released while inside (as it was after): for the comparison in
    tests/unit/test_moto_server.py."""
    was = installed()
    uninstall()
    try:
        yield
    finally:
        if was:
            install()


def main(argv: list[str] | None = None) -> None:
    from moto.server import main as moto_main

    install()
    moto_main(argv if argv is not None else sys.argv[1:])


if __name__ == "__main__":
    main()
