"""moto_server, with four of moto's costs taken out (the local AWS stand-in).

1. TransactWriteItems. moto 5.2.5 makes a transaction undoable by deep-copying every table
it names, once per action, before running it (`DynamoDBBackend.transact_write_items`), so one
transaction costs time in proportion to the table: 50 records (100 actions) took about 1 s on
an empty table and 277 s on one of 10,000 items here (docs/testing.md). Real DynamoDB does no
such thing. With it, any benchmark of the agent's ledger transactions measures moto's copies.
The change keeps moto's code and changes what the undo keeps: the items the transaction's
actions name, read before it runs and put back (or deleted, where there was none) if it
raises. moto's own whole-table "copy" becomes the table itself while it is installed.

2. Query. moto's `Table.query` starts from `Table.all_items()`: every item of the table,
sorted by primary key with Python-level comparisons, then kept if it matches the key
condition, so one Query of a 20,000-item table took 3-5 s (one page). Real DynamoDB reads one
partition. The change keeps moto's `Table.query` and hands it, for that one call, the items
of the queried partition instead of the whole table, in the order `all_items()` has them
(`_partition`): moto's own code then filters, sorts, pages, projects and counts them exactly
as before, since every item it would have dropped as not matching the partition key is
simply absent. Table Queries read the partition from moto's own `Table.items`; index Queries
from a lookup by the index's partition-key value, built on first use and built again after
any write (`_writes`: every `DynamoDBBackend` method that is not a read bumps it).

3. DynamoDB responses. moto's JSON serializer writes each attribute value of each item by
walking the AttributeValue shape's ten members and looking each up through its alias
providers: after (2), most of a 1 MB Query page's time (2.0 of 2.3 s in a profile). An
attribute value whose wire form is the value itself (S, N, BOOL, NULL, SS, NS, and L and M
of those) is now written as it is (`_as_serialized`); binary ones (base64 on the wire) and
anything else still go through moto's serializer.

4. A Query's page. After (2) and (3), a py-spy profile of the online restore's 17 by-key
Queries (10,000 LATEST items, ~6 CPU-s of this server) showed `copy.deepcopy(results)` in
moto's `Table.query` 58% (mostly making a new DynamoType per attribute: a first version of
this change that still made them spent 35% of the samples on that one line),
`dynamo_to_dict` building the response 23%, `Item.size()` (twice per result while paging)
12%. moto copies a page so that an answer is not the stored item; what
its writes change in place is an item's attribute map (an attribute set or removed) and L, M
and set values (`SET a.b`, `ADD` to a set), never a DynamoType's type or value once made. So
moto's table module gets a `copy` (`_PageCopies`) whose deepcopy of a page, or of a Scan
item, makes new Items and attribute maps, copies L, M and sets as moto's
`DynamoType.__deepcopy__` does and keeps the scalars (S, N, B, BOOL, NULL); within a Query or
Scan each item is sized once (`_item_size`; S and N directly, the rest by moto); and
`dynamo_to_dict` and the serializer's map of attribute values are made directly for the
plain wire types (`_dynamo_to_dict`, `_serialize_type_map`; binary and anything else by
moto). Server CPU for that listing, two servers seeded alike and alternated, under load
(2026-12-01): 3.8-7.8 CPU-s before (median 4.7), 1.8-2.7 after (median 2.1).

`install()` (or `changed()`) installs all four, and with them three fixes of moto's races
that have modules of their own: moto_dynamodb_fast.py, moto_sqs.py (ReceiveMessage and
DeleteMessage) and moto_dynamodb_writes.py (each write atomic with its condition). The
answers are the same:
tests/unit/test_moto_server.py runs the same transactions, and random tables, indexes, items
(any attribute type), writes, Queries and Scans, with and without them and compares every
answer; a caller changing an answer as moto's writes change items leaves the stored item.

`python -m tests.support.moto_server -H 127.0.0.1 -p PORT` is moto_server with them
installed; tests/support/local_aws.py starts that for `make demo`, the e2e tests and the
benchmarks. tests/conftest.py installs them for the in-process tests too: moto's whole-table
copy also iterates a table while another thread writes to it, and fails the transaction with
"dictionary changed size during iteration" (two daemons on one table, 2026-12-01).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import inspect
import itertools
import sys
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import Any, cast

from moto.core.serialize import BaseJSONSerializer
from moto.dynamodb import models as dynamodb_models
from moto.dynamodb import responses as dynamodb_responses
from moto.dynamodb.models import DynamoDBBackend
from moto.dynamodb.models import table as table_module
from moto.dynamodb.models.dynamo_type import DynamoType, Item, LimitedSizeDict
from moto.dynamodb.models.table import Table
from moto.dynamodb.models.utilities import bytesize, dynamo_to_dict

from tests.support import moto_dynamodb_fast, moto_dynamodb_writes, moto_sqs, patching


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
_MOTO_COPY = copy  # the module moto's models/__init__.py imports as `copy` (not re-exported)


def _transact_write_items(self: DynamoDBBackend, transact_items: list[dict[str, Any]]) -> None:
    touched = _touched(self, transact_items)
    try:
        _MOTO_TRANSACT(self, transact_items)
    except Exception:
        _undo(self, touched)
        raise


# -- 2. Query: the queried partition instead of the whole table -----------------------------

# Changed after every write (moto_server answers requests on several threads): an index
# lookup built at one value of `_written` is used while `_written` still has it. A write
# bumps it when it returns, so a lookup built while a write ran is built again next time.
_writes = itertools.count(1)
_written = 0

# The `DynamoDBBackend` methods that change no item; every other one bumps `_written`.
_READS = frozenset(
    {
        "batch_get_item",
        "default_vpc_endpoint_service",
        "describe_backup",
        "describe_continuous_backups",
        "describe_endpoints",
        "describe_export",
        "describe_import",
        "describe_table",
        "describe_time_to_live",
        "get_backup",
        "get_item",
        "get_keys_value",
        "get_resource_policy",
        "get_schema",
        "get_table",
        "get_table_keys_name",
        "iter_tagged_resources",
        "list_backups",
        "list_exports",
        "list_tables",
        "list_tags_of_resource",
        "query",
        "scan",
        "transact_get_items",
    }
)


def _bumps_written(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def writing(*args: Any, **kwargs: Any) -> Any:
        global _written
        try:
            return method(*args, **kwargs)
        finally:
            _written = next(_writes)

    return writing


def _all_items_order(item: Item) -> Any:
    """The sort key of moto's `Table.all_items()` (table.py), so a partition's items come in
    the order moto's query would have met them."""
    return (item.hash_key, item.range_key) if item.range_key else item.hash_key


class _IndexLookup:
    """One index's items by the value(s) of its partition-key attribute(s), as of `written`.
    Items with a value Python cannot hash (a map or list, never a key type) are in `odd`
    and offered to every Query: moto's own comparison then drops them."""

    def __init__(self, table: Table, attrs: tuple[str, ...], written: int) -> None:
        self.written = written
        self.groups: dict[tuple[Any, ...], list[Item]] = {}
        self.odd: list[Item] = []
        self.sorted: set[tuple[Any, ...]] = set()
        for item in _raw_items(table):
            values = tuple(item.attrs.get(name) for name in attrs)
            if any(not value for value in values):  # moto's test: absent from the index
                continue
            try:
                self.groups.setdefault(values, []).append(item)
            except TypeError:
                self.odd.append(item)

    def partition(self, values: tuple[Any, ...]) -> list[Item]:
        group = self.groups.get(values, [])
        if values not in self.sorted:  # once per build; a new list: other threads read it
            group = self.groups[values] = sorted(group, key=_all_items_order)
            self.sorted.add(values)
        if not self.odd:
            return group
        return sorted(group + self.odd, key=_all_items_order)


def _raw_items(table: Table) -> list[Item]:
    """`Table.all_items()` without its sort."""
    hash_sets: list[Any] = list(table.items.values())
    if table.range_key_attr:
        return [item for hash_set in hash_sets for item in list(hash_set.values())]
    return hash_sets


_LOOKUPS: weakref.WeakKeyDictionary[Table, dict[tuple[str, ...], _IndexLookup]] = (
    weakref.WeakKeyDictionary()
)


def _partition(
    table: Table,
    hash_key: Any,
    index_name: str | None,
    hash_key_conditions: list[tuple[str, Any]] | None,
) -> list[Item] | None:
    """The items moto's `Table.query` can keep for this key condition, in `all_items()`
    order; None where the change does not apply (moto's own path answers, or refuses)."""
    try:
        if index_name is None:
            if hash_key is None:
                return None
            hash_set = table.items.get(hash_key)
            if hash_set is None:
                return []
            found = list(hash_set.values()) if table.range_key_attr else [hash_set]
            return sorted((i for i in found if isinstance(i, Item)), key=_all_items_order)
        index = {i.name: i for i in table.all_indexes()}.get(index_name)
        if index is None:
            return None
        attrs = tuple(k["AttributeName"] for k in index.schema if k["KeyType"] == "HASH")
        conditions = dict(hash_key_conditions or [])
        if not attrs or set(conditions) != set(attrs):
            return None
        values = tuple(conditions[name] for name in attrs)
        hash(values)
    except TypeError:  # a value Python cannot hash: moto's own path answers
        return None
    written = _written  # read before the build: a write during it makes the next one rebuild
    lookups = _LOOKUPS.setdefault(table, {})
    lookup = lookups.get(attrs)
    if lookup is None or lookup.written != written:
        lookup = lookups[attrs] = _IndexLookup(table, attrs, written)
    return lookup.partition(values)


_narrowed = threading.local()  # (table, its items for the one query running on this thread)


def _all_items(self: Table) -> list[Item]:
    narrowed = getattr(_narrowed, "items", None)
    if narrowed is not None and narrowed[0] is self:
        return list(narrowed[1])
    return _MOTO_ALL_ITEMS(self)


def _query(
    self: Table,
    hash_key: Any,
    range_comparison: str | None,
    range_objs: list[Any],
    limit: int,
    exclusive_start_key: dict[str, Any],
    scan_index_forward: bool,
    projection_expressions: list[list[str]] | None,
    index_name: str | None = None,
    consistent_read: bool = False,
    filter_expression: Any = None,
    hash_key_conditions: list[tuple[str, Any]] | None = None,
    range_key_conditions: list[tuple[str, str, list[Any]]] | None = None,
    **filter_kwargs: Any,
) -> tuple[list[Item], int, dict[str, Any] | None]:
    items = _partition(self, hash_key, index_name, hash_key_conditions)
    if items is not None:
        _narrowed.items = (self, items)
    try:
        with _sized_once():
            return _MOTO_QUERY(
                self,
                hash_key,
                range_comparison,
                range_objs,
                limit,
                exclusive_start_key,
                scan_index_forward,
                projection_expressions,
                index_name,
                consistent_read,
                filter_expression,
                hash_key_conditions=hash_key_conditions,
                range_key_conditions=range_key_conditions,
                **filter_kwargs,
            )
    finally:
        _narrowed.items = None


_MOTO_QUERY = Table.query
_MOTO_ALL_ITEMS = Table.all_items

# -- 3. DynamoDB's attribute values in a response: as they are, not shape by shape -----------

# The members of DynamoDB's (and DynamoDB Streams') AttributeValue shape.
_ATTRIBUTE_VALUE = frozenset({"S", "N", "B", "SS", "NS", "BS", "M", "L", "NULL", "BOOL"})


def _as_serialized(value: Any) -> Any:
    """`value` (one AttributeValue, as moto's DynamoResult holds it) as moto's JSON serializer
    would write it, where that is the value itself: S and N strings, BOOL and NULL booleans,
    SS and NS lists of strings, and L and M of those. None for anything else (B and BS are
    base64-encoded by the serializer, and anything unexpected): moto's own path then."""
    if type(value) is not dict or len(value) != 1:
        return None
    ((kind, inner),) = value.items()
    if kind in ("S", "N"):
        return value if type(inner) is str else None
    if kind in ("BOOL", "NULL"):
        return value if type(inner) is bool else None
    if kind in ("SS", "NS"):
        return value if type(inner) is list and all(type(i) is str for i in inner) else None
    if kind == "L" and type(inner) is list:
        members = [_as_serialized(i) for i in inner]
        return None if any(m is None for m in members) else {"L": members}
    if kind == "M" and type(inner) is dict and all(type(k) is str for k in inner):
        entries = {k: _as_serialized(v) for k, v in inner.items()}
        return None if any(v is None for v in entries.values()) else {"M": entries}
    return None


def _serialize_type_structure(
    self: BaseJSONSerializer, serialized: Any, value: Any, shape: Any, key: str
) -> None:
    if key and set(shape.members) == _ATTRIBUTE_VALUE:
        plain = _as_serialized(value)
        if plain is not None:
            self._default_serialize(serialized, plain, shape, key)
            return
    _MOTO_JSON_STRUCTURE(self, serialized, value, shape, key)


def _serialize_type_map(
    self: BaseJSONSerializer, serialized: Any, value: Any, shape: Any, key: str
) -> None:
    """An item (a map of attribute values): each plain value written as it is, as
    `_serialize_type_structure` writes it, without moto's `_serialize` dispatch per value."""
    member = getattr(shape, "value", None)
    if (
        type(value) is not dict
        or member is None
        or getattr(member, "type_name", None) != "structure"
        or set(member.members) != _ATTRIBUTE_VALUE
        or type(self)._serialize_type_structure is not _serialize_type_structure
    ):
        _MOTO_JSON_MAP(self, serialized, value, shape, key)
        return
    map_obj: dict[str, Any] = self.MAP_TYPE()
    self._default_serialize(serialized, map_obj, shape, key)
    for sub_key, sub_value in value.items():
        plain = _as_serialized(sub_value) if sub_key else None
        if plain is None:
            self._serialize(map_obj, sub_value, member, sub_key)
        else:
            self._default_serialize(map_obj, plain, member, sub_key)


_MOTO_JSON_STRUCTURE = BaseJSONSerializer._serialize_type_structure
_MOTO_JSON_MAP = BaseJSONSerializer._serialize_type_map

# -- 4. A Query's (and Scan's) page: moto's copies made directly, each item sized once ------

_TABLE_COPY = copy  # the `copy` module, as moto's table.py imports it (not re-exported)


_SCALARS = frozenset({"S", "N", "B", "BOOL", "NULL"})


def _value_copy(value: Any) -> Any:
    """What moto's answer needs of `copy.deepcopy(value)` (one attribute value): a scalar
    (S, N, B, BOOL, NULL holding a str, bytes or bool) as it is, since nothing in moto changes
    a DynamoType's type or value once made (a write replaces the attribute; moto's own
    LastEvaluatedKey hands out the stored key values); L, M and sets (which UpdateItem
    changes in place: SET a.b, ADD to a set) copied as moto's `DynamoType.__deepcopy__` copies
    them, without `copy.deepcopy`'s dispatch and memo per value. Anything else: `copy.deepcopy`."""
    if type(value) is not DynamoType:
        return copy.deepcopy(value)
    kind = value.type
    if kind in _SCALARS and type(value.value) in (str, bytes, bool):
        return value
    made = DynamoType.__new__(DynamoType)
    made.type = kind
    if kind == "L":
        made.value = [_value_copy(member) for member in value.value]
    elif kind == "M":
        made.value = {name: _value_copy(member) for name, member in value.value.items()}
    elif kind in ("SS", "NS", "BS"):
        made.value = list(value.value)
    else:
        made.value = copy.deepcopy(value.value)
    return made


def _item_copy(item: Item, memo: dict[int, Any]) -> Item:
    """`copy.deepcopy(item, memo)` as moto's `Item.__deepcopy__` makes it (hash key, range
    key and every attribute copied, the attributes set without re-sizing)."""
    found = memo.get(id(item))
    if found is not None:  # the same item twice in one page: one copy, as deepcopy does
        return cast(Item, found)
    made = cast(Item, Item.__new__(Item))  # moto annotates BaseModel.__new__ as BaseModel
    memo[id(item)] = made
    made.hash_key = _value_copy(item.hash_key)
    made.range_key = _value_copy(item.range_key)
    made.attrs = LimitedSizeDict({k: _value_copy(v) for k, v in item.attrs.items()})
    return made


class _PageCopies:
    """What moto's table.py calls `copy` while installed: `copy.deepcopy` of a Query's page
    (a list of items) or of one Scan result (an item) made by `_item_copy`; anything else
    (backups, restored tables) by `copy` itself."""

    copy = staticmethod(_TABLE_COPY.copy)

    @staticmethod
    def deepcopy(value: Any, memo: dict[int, Any] | None = None) -> Any:
        memo = {} if memo is None else memo
        if type(value) is Item:
            return _item_copy(value, memo)
        if type(value) is list and all(type(v) is Item for v in value):
            return [_item_copy(v, memo) for v in value]
        return _TABLE_COPY.deepcopy(value, memo)


# Item sizes while a Query or Scan runs on this thread: id -> (item, size). moto sizes each
# result twice (the 1 MB check, then the page's running total) and nothing changes an item
# between the two but a write on another thread, which the answer may show or not.
_sizing = threading.local()


def _item_size(self: Item) -> int:
    sizes: dict[int, tuple[Item, int]] | None = getattr(_sizing, "sizes", None)
    if sizes is None:
        return _MOTO_ITEM_SIZE(self)
    known = sizes.get(id(self))
    if known is not None and known[0] is self:
        return known[1]
    size = _size_of(self)
    sizes[id(self)] = (self, size)
    return size


def _size_of(item: Item) -> int:
    """moto's `Item.size()`, with `DynamoType.size()` made directly for S (its UTF-8 bytes)
    and N (its characters), the types of nearly every attribute; the others ask moto."""
    total = 0
    for name, value in item.attrs.items():
        total += bytesize(name)
        if type(value) is DynamoType and type(value.value) is str:
            if value.type == "S":
                total += len(value.value.encode("utf-8"))
                continue
            if value.type == "N":
                total += len(value.value)
                continue
        total += value.size()
    return total


@contextlib.contextmanager
def _sized_once() -> Iterator[None]:
    _sizing.sizes = {}
    try:
        yield
    finally:
        _sizing.sizes = None


def _scan(self: Table, *args: Any, **kwargs: Any) -> tuple[list[Item], int, dict[str, Any] | None]:
    with _sized_once():
        return _MOTO_SCAN(self, *args, **kwargs)


_MOTO_ITEM_SIZE = Item.size
_MOTO_SCAN = Table.scan


# The response: moto's `dynamo_to_dict` (DynamoResult) for the plain wire types, directly.
def _dynamo_to_dict(obj: Any) -> Any:
    """`dynamo_to_dict(obj)` (moto/dynamodb/models/utilities.py), made directly for what a
    Query page holds: dicts (an item's LimitedSizeDict too) and lists of DynamoTypes of S, N,
    BOOL, NULL, SS, NS, L and M, and str, int, bool and None. Binary types (moto decodes
    their base64), anything with `to_json`, datetimes and anything else: moto's own."""
    kind = type(obj)
    if kind is DynamoType:
        name, value = obj.type, obj.value
        if name in ("S", "N"):
            if type(value) is str:
                return {name: value}
        elif name in ("BOOL", "NULL"):
            if type(value) is bool:
                return {name: value}
        elif name in ("SS", "NS"):
            if type(value) is list and all(type(v) is str for v in value):
                return {name: list(value)}
        elif name == "L":
            if type(value) is list:
                return {name: [_dynamo_to_dict(v) for v in value]}
        elif name == "M" and type(value) is dict:
            return {name: {k: _dynamo_to_dict(v) for k, v in value.items()}}
        return _MOTO_TO_DICT(obj)
    if kind is dict or kind is LimitedSizeDict:
        return {k: _dynamo_to_dict(v) for k, v in obj.items()}
    if kind is list:
        return [_dynamo_to_dict(v) for v in obj]
    if kind is str or kind is int or kind is bool or obj is None:
        return obj
    return _MOTO_TO_DICT(obj)


_MOTO_TO_DICT = dynamo_to_dict  # as moto's responses.py imports it (not re-exported)

# -- installing them --------------------------------------------------------------------------


def _patches() -> dict[tuple[type, str], Any]:
    """What `install()` sets: (class, attribute) -> value."""
    patches: dict[tuple[type, str], Any] = {}
    for name, method in _MOTO_BACKEND.items():
        if name == "transact_write_items":
            method = _transact_write_items
        if name not in _READS:
            patches[(DynamoDBBackend, name)] = _bumps_written(method)
    patches[(Table, "query")] = _query
    patches[(Table, "all_items")] = _all_items
    patches[(Table, "scan")] = _scan
    patches[(Item, "size")] = _item_size
    patches[(BaseJSONSerializer, "_serialize_type_structure")] = _serialize_type_structure
    patches[(BaseJSONSerializer, "_serialize_type_map")] = _serialize_type_map
    return patches


# moto's own methods, as released: the public functions DynamoDBBackend defines itself
_MOTO_BACKEND: dict[str, Callable[..., Any]] = {
    name: value
    for name, value in vars(DynamoDBBackend).items()
    if inspect.isfunction(value) and not name.startswith("_")
}
_MOTO_TABLE: dict[str, Callable[..., Any]] = {
    "query": _MOTO_QUERY,
    "all_items": _MOTO_ALL_ITEMS,
    "scan": _MOTO_SCAN,
}
_installed = False


def installed() -> bool:
    return _installed


def install() -> None:
    """Install the changes (see the module docstring) in this process."""
    global _installed
    for (owner, name), value in _patches().items():
        setattr(owner, name, value)
    # moto's modules import these names without re-exporting them (attr-defined, here and in
    # uninstall()); a class with the `copy` module's functions stands in for it (assignment)
    dynamodb_models.copy = _TablesByReference  # type: ignore[attr-defined, assignment]
    table_module.copy = _PageCopies  # type: ignore[attr-defined, assignment]
    dynamodb_responses.dynamo_to_dict = _dynamo_to_dict  # type: ignore[attr-defined]
    moto_dynamodb_fast.install()  # two more moto costs out: see that module
    moto_sqs.install()  # ReceiveMessage one at a time: see that module
    moto_dynamodb_writes.install()  # each write atomic with its condition: see that module
    _installed = True


def uninstall() -> None:
    global _installed
    for name, method in _MOTO_BACKEND.items():
        setattr(DynamoDBBackend, name, method)
    for name, method in _MOTO_TABLE.items():
        setattr(Table, name, method)
    BaseJSONSerializer._serialize_type_structure = _MOTO_JSON_STRUCTURE  # type: ignore[method-assign]
    BaseJSONSerializer._serialize_type_map = _MOTO_JSON_MAP  # type: ignore[method-assign]
    Item.size = _MOTO_ITEM_SIZE  # type: ignore[method-assign]
    dynamodb_models.copy = _MOTO_COPY  # type: ignore[attr-defined]
    table_module.copy = _TABLE_COPY  # type: ignore[attr-defined]
    dynamodb_responses.dynamo_to_dict = _MOTO_TO_DICT  # type: ignore[attr-defined]
    moto_dynamodb_fast.uninstall()  # all that install() installed: moto as released
    moto_sqs.uninstall()
    moto_dynamodb_writes.uninstall()
    _installed = False


@contextlib.contextmanager
def changed() -> Iterator[None]:
    """The changes installed while inside (as it was after)."""
    was = installed()
    install()
    try:
        yield
    finally:
        if not was:
            uninstall()


touched_items_only = changed  # the name from when there was one change


def as_released() -> contextlib.AbstractContextManager[None]:
    """moto as released while inside (as it was after): for the comparisons in
    tests/unit/test_moto_server.py."""
    return patching.released(installed, install, uninstall)


def main(argv: list[str] | None = None) -> None:
    from moto.server import main as moto_main

    install()
    moto_main(argv if argv is not None else sys.argv[1:])


if __name__ == "__main__":
    main()
