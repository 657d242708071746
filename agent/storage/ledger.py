"""DynamoDB: one item per (bucket, key, version) and a LATEST pointer per key.

Table layout (created by scripts/bootstrap-aws)::

    pk  = "<bucket>/<key>"           partition: one object key
    sk  = "V#<version token>"        one item per version, deletion or removal
        = "LATEST"                   `history.latest_entry` of the key's records
    GSI "by-key": gsi_bucket (hash), gsi_key (range) — only on LATEST items, so
        "keys under a prefix" is a Query, never a Scan. gsi_bucket is
        "<bucket>#<shard>" (agent/storage/key_index.py): one Query per shard page,
        merged in key order; "<bucket>" alone in tables an older release wrote.

LATEST is what agent/history.py derives from the key's records: the version S3 serves
(or the deletion on top). A new version or deletion moves it by one conditional write
(`order_key < new`): a duplicate delivery is a no-op and an older event never replaces a
newer LATEST. A removal of the current version, a LATEST written by an older release
(another `order_key` format) and reconcile's corrections derive it again from the key's
records (`settle`), conditionally on the LATEST that was read. Reads of a LATEST in the
older format derive it the same way without writing (migrate on read). `record_many` makes
the two writes of many new versions in TransactWriteItems requests (same conditions, same
results; docs/design.md "Transactions") and leaves everything else to `record`.

Items are read as untrusted input (written by hand, by another tool, by an attacker with
table access): each goes through `parse_item`, which returns a record or a `Rejection`
naming its pk and sk. A rejected item is skipped (a version item), or its key's LATEST is
derived from the versions (a LATEST item), counted in `Ledger.rejections` and logged at
error; the other items are read as usual.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import json
import threading
import uuid
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import botocore.exceptions
import structlog

from agent import history, order
from agent.aws import (
    classify,
    dynamodb_serializer,
    error_code,
)
from agent.errors import RetryableError
from agent.records import (
    MAX_HOLDERS,
    Rejection,
    Rejections,
    VersionRecord,
    digest_named,
    validated,
)
from agent.storage import key_index
from agent.storage.item_values import item_values

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

LATEST = "LATEST"
SETTLED_THROUGH = "settled_through"  # on LATEST: see ADVANCE_CONDITION
VERSION_PREFIX = "V#"
KEY_INDEX = "by-key"
SETTLE_ATTEMPTS = 5
RECENT_REMOVALS = 4096
# What a replica group's holder writes (UpdateItem) touch: the key, `holders`, and
# `volume_id` (a release by the volume it names moves it to a holder left), nothing else
# (IAM's dynamodb:Attributes must list the key attributes too).
HOLDER_ATTRIBUTES = ("pk", "sk", "holders", "volume_id")
# The conditions of a new version's two writes: its version item is not there yet, and
# LATEST is absent or older (in today's order format) than the version.
VERSION_CONDITION = "attribute_not_exists(pk)"
# LATEST moves to a record later in the version order, and past its `settled_through` when
# it has one (`_settle_mark`: the newest removal a settle saw of a version not recorded yet
# or recorded above LATEST's entry): a version removed for good sorts below its removal, so
# its put, recorded late by another process than the one that recorded the removal (a fleet,
# or the same agent after a restart), no longer makes it LATEST (a review, 2026-12-02). A
# `settled_through` that is no string fails the comparison (DynamoDB: values of another type
# do not match) and the refusal settles LATEST again (`_settled`).
ADVANCE_CONDITION = (
    "attribute_not_exists(pk) OR (begins_with(order_key, :format) AND order_key < :order"
    " AND (attribute_not_exists(settled_through) OR settled_through < :order))"
)
# A release retries while other holders change the item; each failure is another's add or
# release, at most two per replica group.
RELEASE_ATTEMPTS = 2 * MAX_HOLDERS + SETTLE_ATTEMPTS

# TransactWriteItems: at most 100 actions (two per record: the version and its LATEST) and
# 4 MB of items per request (DynamoDB API reference); the size is counted as the items'
# JSON, which is larger than DynamoDB's own measure, with room to spare.
TRANSACT_ACTIONS = 100
TRANSACT_BYTES = 3_500_000

log = structlog.get_logger("agent.ledger")


class Written(enum.Enum):
    """What a record's write found (`Ledger.write`): whether it made the record's volume a
    holder, and if not, whether the item it found names that volume (with this copy)."""

    FRESH = "fresh"  # this call's conditional write made the record's volume a holder
    # Already recorded, and the item the refusal returned (ALL_OLD) names the record's volume
    # as a holder of the record's copy (`_found`): an earlier record of this volume's, or
    # this call's own write whose answer was lost (a read timeout, a 500) and which botocore
    # sent again, refused by the item the first request made. No request tells the two
    # apart, and a caller keeping the journal in step with the item need not (commit.py).
    HELD = "held"
    KNOWN = "known"  # already recorded, not naming the record's volume (or malformed)


def object_pk(bucket: str, key: str) -> str:
    return f"{bucket}/{key}"


def parse_item(item: Any) -> VersionRecord | Rejection:
    """A DynamoDB item (wire format) as the record it holds, or why it holds none. The
    record must be the one its pk and sk name."""
    pk, sk = _key_text(item, "pk"), _key_text(item, "sk")
    where = f"{pk} {sk}"
    try:
        data = _attributes(item)
    except Exception:  # noqa: BLE001 - any malformed attribute value: TypeError, decimal's, …
        return Rejection("dynamodb", where, "an attribute DynamoDB's types cannot hold")
    record = validated(data)
    if isinstance(record, str):
        return Rejection("dynamodb", where, record, digest_named(data))
    if pk != object_pk(record.bucket, record.key) or sk not in (
        LATEST,
        VERSION_PREFIX + record.version_token,
    ):
        return Rejection("dynamodb", where, "pk and sk do not name this record")
    return record


def _attributes(item: Any) -> dict[str, Any]:
    """An item's attributes as boto3's `TypeDeserializer` reads them (item_values.py), with
    `size` and `stored_size` as the int the record takes when they are whole numbers
    (`records._size`: a whole Decimal is int()'d)."""
    return item_values(item, _WHOLE_NUMBERS)


# Record fields the record holds as an int (`records._size`: a whole Decimal is int()'d).
_WHOLE_NUMBERS = frozenset(("size", "stored_size"))


def _holder_state(
    seen: VersionRecord,
) -> tuple[str, dict[str, str], dict[str, Any]]:
    """A condition (with its names and values) that holds while the item's holders are
    those of `seen`: its `volume_id` and exactly its `holders` map (or none)."""
    names: dict[str, str] = {}
    values: dict[str, Any] = {}
    if seen.volume_id:
        parts = ["volume_id = :seen_volume"]
        values[":seen_volume"] = {"S": seen.volume_id}
    else:
        parts = ["(attribute_not_exists(volume_id) OR size(volume_id) = :zero)"]
        values[":zero"] = {"N": "0"}
    if seen.holders is None:
        parts.append("attribute_not_exists(holders)")
    else:
        parts.append("size(holders) = :seen_count")
        values[":seen_count"] = {"N": str(len(seen.holders))}
        for index, (group, volume) in enumerate(sorted(seen.holders.items())):
            names[f"#h{index}"] = group
            values[f":h{index}"] = {"S": volume}
            parts.append(f"holders.#h{index} = :h{index}")
    return " AND ".join(parts), names, values


def _released(seen: VersionRecord, volume_id: str) -> tuple[str, dict[str, str]] | None:
    """The holders of `seen` once `volume_id` let go: (`volume_id`, `holders`), with
    `volume_id` moved to a holder left if it named the one going; None when none is left."""
    holders = {g: v for g, v in sorted((seen.holders or {}).items()) if v != volume_id}
    first = seen.volume_id
    if first == volume_id:
        first = next(iter(holders.values()), "")
    if not first:
        return None
    return first, holders


def _release_update(
    seen: VersionRecord,
    left: tuple[str, dict[str, str]],
    names: dict[str, str],
    values: dict[str, Any],
) -> str:
    """The UpdateExpression taking `seen`'s holders to `left` (names and values added to
    the condition's: the groups' placeholders are the condition's #h<i>)."""
    first, holders = left
    removed = [n for n, g in names.items() if n.startswith("#h") and g not in holders]
    clauses = []
    if first != seen.volume_id:
        values[":first"] = {"S": first}
        clauses.append("SET volume_id = :first")
    if seen.holders is not None and not holders:
        clauses.append("REMOVE holders")  # the holder left is an older release's volume_id
    elif removed:
        clauses.append("REMOVE " + ", ".join(f"holders.{n}" for n in sorted(removed)))
    return " ".join(clauses)


def _settled(latest: dict[str, Any]) -> str | None:
    """A raw LATEST item's `settled_through`: None when absent, "" when it is not a string
    (the item is untrusted: such a mark refuses every advance, so it is settled over)."""
    if SETTLED_THROUGH not in latest:
        return None
    value = latest[SETTLED_THROUGH]
    text = value.get("S") if isinstance(value, dict) else None
    return text if isinstance(text, str) and text else ""


def _settle_mark(records: Sequence[VersionRecord], wanted: VersionRecord) -> str | None:
    """The `settled_through` LATEST needs beside `wanted`: the order key of the newest removal
    of a version that a late put could make LATEST (one not recorded yet, or recorded above
    `wanted`); None when there is none (a removal of a version below `wanted` needs no mark:
    the order already refuses its put, and LATEST is not written again for it)."""
    recorded = {r.version_id: r.order_key for r in records if not history.is_removal(r)}
    marks = [
        removal.order_key
        for removal in records
        if history.is_removal(removal)
        and removal.order_key > wanted.order_key
        and recorded.get(removal.version_id, removal.order_key) > wanted.order_key
    ]
    return max(marks) if marks else None


def _found(record: VersionRecord, seen: VersionRecord | None) -> Written:
    """What a refused write of `record` found in `seen` (the item the refusal returned,
    None when it returned none or a malformed one): HELD when it names `record`'s volume
    among its holders (`holder_volumes`: this group's, or an older release's `volume_id`;
    a volume belongs to one group) for the same copy (`sha256`), else KNOWN."""
    if (
        seen is not None
        and record.volume_id
        and record.volume_id in seen.holder_volumes()
        and seen.sha256 == record.sha256
    ):
        return Written.HELD
    return Written.KNOWN


def _key_text(item: Any, name: str) -> str:
    value = item.get(name) if isinstance(item, dict) else None
    text = value.get("S") if isinstance(value, dict) else None
    return text if isinstance(text, str) else f"<no {name}>"


class Ledger:
    def __init__(
        self,
        dynamodb: DynamoDBClient,
        table: str,
        rejections: Rejections | None = None,
        *,
        group: str | None = None,
        volume_id: str | None = None,
    ) -> None:
        self._db = dynamodb
        self.table = table
        # The replica group this process writes for (its queue's name; `fleet.replicas` > 1)
        # and its volume; None: one holder per version, `volume_id` (docs/fleet.md
        # "Replicas"). Only records of this volume's copies make it a holder: a record read
        # back and recorded again (LATEST after a crash) names another's.
        self.group = group if volume_id else None
        self.volume_id = volume_id
        self.rejections = rejections if rejections is not None else Rejections()
        self._guard = threading.Lock()
        self._key_locks: dict[str, tuple[threading.Lock, int]] = {}
        # Versions removed lately: their put event, if it comes late (or a reindex replays
        # it after the removal), must not make them LATEST.
        self._removed: OrderedDict[tuple[str, str], None] = OrderedDict()

    # -- writes ----------------------------------------------------------------------

    def record(self, record: VersionRecord) -> bool:
        """Record a version, deletion or removal and bring LATEST up to date. False if
        already known. Writes of one key are serialised in this process."""
        return self.write(record) is Written.FRESH

    def write(self, record: VersionRecord) -> Written:
        """`record`, saying what the version's write found: `Written.FRESH` where `record`
        says True; `Written.HELD` or `Written.KNOWN` where it says False."""
        pk = object_pk(record.bucket, record.key)
        with self._holding(pk):
            written = self._put_version(record)
            if history.is_removal(record):
                self._remember_removal(pk, record.version_id)
                self._after_removal(record)
            elif self._was_removed(pk, record.version_id) or history.empties_null(record):
                # a delete of the null version uncovers the versions under it, if any
                self.settle(record.bucket, record.key)
            else:
                self._advance_latest(record)
        return written

    def advance(self, known: VersionRecord) -> None:
        """Bring LATEST up to date for a version read back from the ledger (`known`: a
        redelivery finds it recorded, and a crash may have come between its write and
        LATEST's). The version item is never written: a put would recreate an item that
        retention deleted since it was read, naming a volume whose journal forgot it (its
        copy then freed by gc), and with LATEST a key S3 had deleted (the fleet review,
        2026-12-02). The item is looked at again after LATEST is advanced: gone, LATEST is
        derived from what is left."""
        pk = object_pk(known.bucket, known.key)
        with self._holding(pk):
            if (
                history.is_removal(known)
                or self._was_removed(pk, known.version_id)
                or history.empties_null(known)
            ):
                self.settle(known.bucket, known.key)
                return
            self._advance_latest(known)
            if self.get_version(known.bucket, known.key, known.version_token) is None:
                self.settle(known.bucket, known.key)

    def record_many(self, records: Sequence[VersionRecord]) -> list[bool | Exception]:
        """`record` of each record, in order, in fewer requests: the same items in the end
        and the same result per record (True fresh, False already known), or the exception
        `record` would have raised for it (the other records still go through); see
        `write_many`."""
        return [
            w if isinstance(w, Exception) else w is Written.FRESH for w in self.write_many(records)
        ]

    def write_many(self, records: Sequence[VersionRecord]) -> list[Written | Exception]:
        """`write` of each record, in order, in fewer requests: the same items in the end
        and the same result per record, or the exception `write` would have raised for it
        (the other records still go through).

        A plain new version (not a removal, not a version removed lately, not a delete that
        empties the null version; the first record of its key in this call) is written by a
        TransactWriteItems with its LATEST: the two PutItems of `record`, with their very
        conditions, up to 50 records per request. A transaction is all or nothing: when one
        record's condition fails (a duplicate, an out-of-order event, a malformed item, a
        version another replica group wrote) DynamoDB cancels the request and says why per
        action (CancellationReasons, in request order); those records, and those of a
        conflict, go through `record` (which repairs, adds holders, settles), the others
        are sent again. Every other record goes through `record`, after the records of its
        key before it. The keys of a request are held (`_holding`, sorted: two callers take
        them in the same order) while it is made; `record` is called with none held. A
        transaction written is `Written.FRESH` for each of its records, even when botocore
        sent it again after a lost answer (its ClientRequestToken: `_transact`)."""
        results: list[Written | Exception | None] = [None] * len(records)
        batched: list[int] = []
        first_of_key: set[str] = set()
        for index, record in enumerate(records):
            pk = object_pk(record.bucket, record.key)
            if pk not in first_of_key and self._plain_new(record, pk):
                batched.append(index)
            first_of_key.add(pk)
        built: dict[int, _Built] = {}  # each record's actions, made once, and their size
        while batched:
            request, batched = self._next_request(records, batched, built)
            for index, outcome in self._transact(records, request, built).items():
                if outcome is _AGAIN:
                    batched.append(index)  # cancelled for another record's sake
                elif not isinstance(outcome, _Then):
                    results[index] = outcome
            batched.sort()
        for index, record in enumerate(records):
            if results[index] is None:
                try:
                    results[index] = self.write(record)
                except Exception as exc:  # noqa: BLE001 - per record, as `write` raised it
                    results[index] = exc
        return [r for r in results if r is not None]

    def _next_request(
        self, records: Sequence[VersionRecord], batched: list[int], built: dict[int, _Built]
    ) -> tuple[list[int], list[int]]:
        """The records (indexes) of the next TransactWriteItems, from the front of
        `batched`, and those left: two actions each, within TRANSACT_ACTIONS and
        TRANSACT_BYTES. Each record's actions are made once, into `built`."""
        request: list[int] = []
        size = 0
        for position, index in enumerate(batched):
            grown = size + self._built(records, index, built).size
            full = 2 * (len(request) + 1) > TRANSACT_ACTIONS or grown > TRANSACT_BYTES
            if request and full:
                return request, batched[position:]
            request.append(index)
            size = grown
        return request, []

    def _plain_new(self, record: VersionRecord, pk: str) -> bool:
        """Would `record` write its version and advance LATEST, nothing else?"""
        return not (
            history.is_removal(record)
            or history.empties_null(record)
            or self._was_removed(pk, record.version_id)
        )

    def _built(
        self, records: Sequence[VersionRecord], index: int, built: dict[int, _Built]
    ) -> _Built:
        """Record `index`'s transaction actions and their JSON size, made on first use."""
        made = built.get(index)
        if made is None:
            actions = self._new_version_actions(records[index])
            made = built[index] = _Built(actions, len(json.dumps(actions)))
        return made

    def _transact(
        self, records: Sequence[VersionRecord], request: list[int], built: dict[int, _Built]
    ) -> dict[int, Written | Exception | _Then]:
        """Write the records `request` indexes in one TransactWriteItems. Each index maps
        to `Written.FRESH` (written), `_AGAIN` (cancelled for another's sake: send it
        again), `_ALONE` (its own condition failed, or a conflict: `write` decides) or the
        error."""
        pks = sorted({object_pk(records[i].bucket, records[i].key) for i in request})
        with contextlib.ExitStack() as held:
            for pk in pks:
                held.enter_context(self._holding(pk))
            outcomes: dict[int, Written | Exception | _Then] = {}
            sent = []
            for index in request:  # another thread may have removed it since it was read
                record = records[index]
                if self._plain_new(record, object_pk(record.bucket, record.key)):
                    sent.append(index)
                else:
                    outcomes[index] = _ALONE
            if not sent:
                return outcomes
            actions: list[Any] = []
            for index in sent:
                actions.extend(self._built(records, index, built).actions)
            try:
                self._db.transact_write_items(
                    TransactItems=actions,
                    # DynamoDB answers a request repeated with this token within 10 minutes
                    # as the first was answered (botocore's retries send it again), so a
                    # transaction that succeeded is not cancelled by its own writes
                    ClientRequestToken=str(uuid.uuid4()),
                )
            except botocore.exceptions.ClientError as exc:
                code = error_code(exc)
                if code == "TransactionCanceledException":
                    outcomes.update(_cancelled(sent, exc.response.get("CancellationReasons")))
                    return outcomes
                error: Exception = classify(exc, "DynamoDB TransactWriteItems")
                if code == "TransactionInProgressException":  # still running: unknown yet
                    error = RetryableError(str(error))
                elif not isinstance(error, RetryableError):
                    # refused whole (a validation of the request): one record at a time
                    outcomes.update(dict.fromkeys(sent, _ALONE))
                    return outcomes
                outcomes.update(dict.fromkeys(sent, error))
                return outcomes
            except botocore.exceptions.BotoCoreError as exc:
                outcomes.update(dict.fromkeys(sent, classify(exc, "DynamoDB TransactWriteItems")))
                return outcomes
        outcomes.update(dict.fromkeys(sent, Written.FRESH))
        return outcomes

    def _new_version_actions(self, record: VersionRecord) -> list[dict[str, Any]]:
        """The two Puts of `record` for a transaction: `_put_version`'s and
        `_advance_latest`'s, with their conditions."""
        item, _ = self._version_item(record)
        return [
            {
                "Put": {
                    "TableName": self.table,
                    "Item": item,
                    "ConditionExpression": VERSION_CONDITION,
                    "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
                }
            },
            {
                "Put": {
                    "TableName": self.table,
                    "Item": self._latest_item(record),
                    "ConditionExpression": ADVANCE_CONDITION,
                    "ExpressionAttributeValues": _advance_values(record),
                    "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
                }
            },
        ]

    def settle(self, bucket: str, key: str) -> VersionRecord | None:
        """Make LATEST `history.latest_entry` of the key's records; return it. One Query
        reads both (reindex runs with an operator role that may Query, not GetItem)."""
        for _ in range(SETTLE_ATTEMPTS):
            seen, records = self._key_items(bucket, key)
            wanted = history.latest_entry(records)
            if wanted is None:
                if seen is None or self._delete_latest_item(bucket, key, seen):
                    return None
                continue
            through = _settle_mark(records, wanted)
            mark = _settled(seen) if seen is not None else None
            if (
                seen is not None
                and _current_form(seen)
                and self._parsed(seen) == wanted
                and mark != ""  # a mark that is no string is written over
                and (through is None or (mark is not None and mark >= through))
            ):
                return wanted
            if self._put_latest(wanted, seen, through):
                return wanted
        raise RuntimeError(f"LATEST of s3://{bucket}/{key} kept changing while settled")

    def reorder(self, record: VersionRecord, order_key: str) -> None:
        """Give a recorded version another place in the order (reconcile's correction,
        journalled by the caller first), then settle LATEST. The item is written whole
        (PutItem: the agent's role has no UpdateItem of order_key), conditionally on its
        holders being the ones read (`_holder_state`): a holder another replica group adds
        (or releases) meanwhile makes it read the item again and write that one moved."""
        seen: VersionRecord = record
        with self._holding(object_pk(record.bucket, record.key)):
            for _ in range(RELEASE_ATTEMPTS):
                moved = dataclasses.replace(seen, order_key=order_key)
                condition, names, values = _holder_state(seen)
                request: dict[str, Any] = {
                    "TableName": self.table,
                    "Item": self._item(moved, VERSION_PREFIX + record.version_token),
                    "ConditionExpression": "attribute_exists(pk) AND " + condition,
                    "ExpressionAttributeValues": values,
                    "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
                }
                if names:
                    request["ExpressionAttributeNames"] = names
                changed = self._refused("PutItem", self._db.put_item, request)
                if changed is None:
                    break
                fresh = parse_item(changed) if changed else None
                if not isinstance(fresh, VersionRecord):
                    break  # gone (retention) or malformed meanwhile: nothing to move
                seen = fresh
            else:
                raise RuntimeError(f"holders of {record.key} kept changing while reordered")
            self.settle(record.bucket, record.key)

    def _after_removal(self, removal: VersionRecord) -> None:
        """A version went: LATEST is derived again (it stays when an older one went)."""
        self.settle(removal.bucket, removal.key)

    def _put_version(self, record: VersionRecord) -> Written:
        """Write the version item unless it exists; one that exists but is malformed (a
        `Rejection`) is replaced by this record, so a replay of the journal repairs it.
        With a replica group: the item names this volume as the group's holder, and an
        item another group wrote gets this group's holder added (`_add_holder`). FRESH when
        this call made `record`'s volume a holder; else what the refusal returned says
        (`_found`)."""
        item, holding = self._version_item(record)
        old = self._create_version(item)
        if old is None:
            return Written.FRESH
        parsed = parse_item(old) if old else None
        if isinstance(parsed, Rejection):
            return self._repair(record, item, old)
        if parsed is not None and holding:
            return self._add_holder(record, parsed)
        return _found(record, parsed)

    def _version_item(self, record: VersionRecord) -> tuple[dict[str, Any], bool]:
        """The version item of `record`, and whether it names this volume as its replica
        group's holder (`holders`)."""
        item = self._item(record, VERSION_PREFIX + record.version_token)
        holding = self.group is not None and record.volume_id == self.volume_id
        if holding:
            assert self.group is not None
            item["holders"] = {"M": {self.group: {"S": record.volume_id}}}
        return item, holding

    def _add_holder(self, record: VersionRecord, seen: VersionRecord) -> Written:
        """Name `record.volume_id` as this group's holder of a version another wrote: one
        UpdateItem, conditional on the group naming no holder yet, so exactly one volume per
        group holds each version. An item of an older release (no `holders`; its volume_id
        holds the copy, in no named group) gets the map; the volume it names is not added
        twice. FRESH when added; else what the item says (`_found`): HELD when the group's
        holder is this volume (a duplicate in this group, or this call's UpdateItem whose
        answer was lost, refused when sent again), KNOWN when it is another."""
        assert self.group is not None
        key = self._key(record.bucket, record.key, VERSION_PREFIX + record.version_token)
        for _ in range(SETTLE_ATTEMPTS):
            if seen.holder_in(self.group) is not None:
                return _found(record, seen)
            if seen.holders is None and seen.volume_id == record.volume_id:
                return _found(record, seen)  # an older release's item naming this very volume
            if seen.holders is None:
                update = "SET holders = :holders"
                condition = "attribute_exists(pk) AND attribute_not_exists(holders)"
                values: dict[str, Any] = {":holders": {"M": {self.group: {"S": record.volume_id}}}}
                names: dict[str, str] | None = None
            else:
                update = "SET holders.#g = :volume"
                condition = "attribute_exists(holders) AND attribute_not_exists(holders.#g)"
                values = {":volume": {"S": record.volume_id}}
                names = {"#g": self.group}
            request: dict[str, Any] = {
                "TableName": self.table,
                "Key": key,
                "UpdateExpression": update,
                "ConditionExpression": condition,
                "ExpressionAttributeValues": values,
                "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
            }
            if names:
                request["ExpressionAttributeNames"] = names
            try:
                self._db.update_item(**request)
            except botocore.exceptions.ClientError as exc:
                if error_code(exc) != "ConditionalCheckFailedException":
                    raise classify(exc, "DynamoDB UpdateItem holders") from exc
                old: Any = exc.response.get("Item")
                if not old:
                    # gone: the other groups' last hold released meanwhile. This volume holds
                    # the copy (journalled): the item is made again, naming this group, so
                    # that this group's retention expires it in its turn (returning False
                    # left a version no item named, its copy kept for ever, and LATEST
                    # pointing at it: the fleet review, 2026-12-02)
                    made = self._create_version(self._version_item(record)[0])
                    if made is None:
                        return Written.FRESH
                    old = made
                parsed = parse_item(old)
                if not isinstance(parsed, VersionRecord):
                    return Written.KNOWN  # malformed meanwhile: nothing to add to
                seen = parsed  # another group (or this one) wrote first: look again
                continue
            except botocore.exceptions.BotoCoreError as exc:
                raise classify(exc, "DynamoDB UpdateItem holders") from exc
            log.info(
                "ledger.holder_added",
                pk=key["pk"]["S"],
                sk=key["sk"]["S"],
                group=self.group,
                volume_id=record.volume_id,
            )
            return Written.FRESH
        raise RuntimeError(f"holders of {key['pk']['S']} {key['sk']['S']} kept changing")

    def _create_version(self, item: dict[str, Any]) -> dict[str, Any] | None:
        """Write a version item (`_version_item`) unless one exists: None when written, else
        the item that exists (ALL_OLD; empty if the refusal returned none)."""
        return self._refused(
            "PutItem",
            self._db.put_item,
            {
                "TableName": self.table,
                "Item": item,
                "ConditionExpression": VERSION_CONDITION,
                "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
            },
        )

    def _repair(self, record: VersionRecord, item: dict[str, Any], old: dict[str, Any]) -> Written:
        """Replace a malformed version item (`old`) by `record`'s, unless it changed since
        read; refused, what the item now is says (`_found`: this call's repair whose answer
        was lost is HELD)."""
        changed = self._refused(
            "PutItem",
            self._db.put_item,
            {
                "TableName": self.table,
                "Item": item,
                **_unchanged(old, "version_token", "size"),
                "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
            },
        )
        if changed is None:
            log.warning("ledger.item_repaired", pk=item["pk"]["S"], sk=item["sk"]["S"])
            return Written.FRESH
        parsed = parse_item(changed) if changed else None
        return _found(record, parsed if isinstance(parsed, VersionRecord) else None)

    def _advance_latest(self, record: VersionRecord) -> None:
        """LATEST := record if it is later in the order; a LATEST the condition cannot
        compare (older format, or a removal: no version left) is settled instead. The
        refusal returns the LATEST it compared against (no second request)."""
        try:
            self._db.put_item(
                TableName=self.table,
                Item=self._latest_item(record),
                ConditionExpression=ADVANCE_CONDITION,
                ExpressionAttributeValues=_advance_values(record),
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except botocore.exceptions.ClientError as exc:
            if error_code(exc) != "ConditionalCheckFailedException":
                raise classify(exc, "DynamoDB PutItem LATEST") from exc
            refused: Any = exc.response.get("Item")  # the LATEST it compared against
            seen: dict[str, Any] = refused or {}
            latest = self._parsed(seen) if seen else None
            if (
                latest is None
                or not _current_form(seen)
                or history.is_removal(latest)
                # refused only by what the last settle saw: a removed version's late put,
                # or a version older than a removal that is current all the same: derived
                or (
                    latest.order_key < record.order_key
                    and (mark := _settled(seen)) is not None
                    and (mark == "" or mark >= record.order_key)
                )
            ):
                self.settle(record.bucket, record.key)
        except botocore.exceptions.BotoCoreError as exc:
            raise classify(exc, "DynamoDB PutItem LATEST") from exc

    def _put_latest(
        self, record: VersionRecord, seen: dict[str, Any] | None, through: str | None = None
    ) -> bool:
        condition: dict[str, Any] = {"ConditionExpression": "attribute_not_exists(pk)"}
        if seen is not None:
            condition = _unchanged(seen, "version_token", "order_key", SETTLED_THROUGH)
        item = self._latest_item(record)
        if through is not None:
            item[SETTLED_THROUGH] = {"S": through}
        return self._conditional("PutItem LATEST", self._db.put_item, Item=item, **condition)

    def _delete_latest_item(self, bucket: str, key: str, seen: dict[str, Any]) -> bool:
        return self._conditional(
            "DeleteItem LATEST",
            self._db.delete_item,
            Key=self._key(bucket, key, LATEST),
            **_unchanged(seen, "version_token"),
        )

    def _latest_item(self, record: VersionRecord) -> dict[str, Any]:
        return {**self._item(record, LATEST), **key_index.index_fields(record.bucket, record.key)}

    def _remember_removal(self, pk: str, version_id: str | None) -> None:
        with self._guard:
            self._removed[(pk, str(version_id))] = None
            while len(self._removed) > RECENT_REMOVALS:
                self._removed.popitem(last=False)

    def _was_removed(self, pk: str, version_id: str | None) -> bool:
        if version_id in (None, "null"):
            return False
        with self._guard:
            return (pk, str(version_id)) in self._removed

    @contextlib.contextmanager
    def _holding(self, pk: str) -> Iterator[None]:
        with self._guard:
            lock, users = self._key_locks.get(pk, (threading.Lock(), 0))
            self._key_locks[pk] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._guard:
                lock, users = self._key_locks[pk]
                if users == 1:
                    del self._key_locks[pk]
                else:
                    self._key_locks[pk] = (lock, users - 1)

    def delete_version(self, record: VersionRecord) -> None:
        """Forget one version item (retention). LATEST is never touched here."""
        self._conditional(
            "DeleteItem",
            self._db.delete_item,
            Key=self._key(record.bucket, record.key, VERSION_PREFIX + record.version_token),
        )

    def release(self, record: VersionRecord, volume_id: str) -> bool:
        """Volume `volume_id` lets go of its copy of `record` (retention expired it there,
        journal first): its replica group's entry leaves `holders` and, if `volume_id` names
        it, `volume_id` moves to a holder left (`holder_volumes` stays the truth for old
        readers too). The member whose release leaves no holder deletes the item. Every
        write is conditional on the holders being the ones read (`_holder_state`), so of
        two members releasing at once exactly one sees itself last; a refusal reads the
        item again (ALL_OLD) and decides anew. True when the item is gone after this call
        (deleted by it, or found gone: a retry after a lost answer, or another holder's
        release); False when it stays, held by others."""
        key = self._key(record.bucket, record.key, VERSION_PREFIX + record.version_token)
        seen: VersionRecord | None = record
        for _ in range(RELEASE_ATTEMPTS):
            if seen is None or volume_id not in seen.holder_volumes():
                return False  # gone, or released already (a retry after a timeout)
            condition, names, values = _holder_state(seen)
            request: dict[str, Any] = {
                "TableName": self.table,
                "Key": key,
                "ConditionExpression": condition,
                "ExpressionAttributeValues": values,
                "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
            }
            left = _released(seen, volume_id)
            if left is None:
                what, call = "DeleteItem", self._db.delete_item
            else:
                what, call = "UpdateItem holders", self._db.update_item
                request["UpdateExpression"] = _release_update(seen, left, names, values)
            if names:
                request["ExpressionAttributeNames"] = names
            changed = self._refused(what, call, request)
            if changed is None:
                log.info(
                    "ledger.holder_released",
                    pk=key["pk"]["S"],
                    sk=key["sk"]["S"],
                    volume_id=volume_id,
                    deleted=left is None,
                )
                return left is None
            if not changed:
                # refused for want of an item: gone, by this call whose answer was lost and
                # which botocore sent again, or by another holder's last release; either way
                # no holder is left (retention then forgets the key's LATEST too: it stayed
                # for ever when this said False, the fleet review, 2026-12-02)
                log.info("ledger.holder_released", pk=key["pk"]["S"], sk=key["sk"]["S"],
                         volume_id=volume_id, deleted=True, already_gone=True)  # fmt: skip
                return True
            fresh = parse_item(changed) if changed else None
            seen = fresh if isinstance(fresh, VersionRecord) else None
            if isinstance(fresh, Rejection):
                self.rejections.add(fresh)
        raise RuntimeError(f"holders of {key['pk']['S']} {key['sk']['S']} kept changing")

    def _refused(self, what: str, call: Any, request: dict[str, Any]) -> dict[str, Any] | None:
        """Make a conditional request: None when done, else the item the condition refused
        (ALL_OLD; empty when there is none)."""
        try:
            call(**request)
        except botocore.exceptions.ClientError as exc:
            if error_code(exc) != "ConditionalCheckFailedException":
                raise classify(exc, "DynamoDB " + what) from exc
            old: Any = exc.response.get("Item")
            return old if isinstance(old, dict) else {}
        except botocore.exceptions.BotoCoreError as exc:
            raise classify(exc, "DynamoDB " + what) from exc
        return None

    def delete_latest(self, bucket: str, key: str, expected_token: str) -> bool:
        """Forget a key's LATEST only if it still points at `expected_token`."""
        return self._conditional(
            "DeleteItem LATEST",
            self._db.delete_item,
            Key=self._key(bucket, key, LATEST),
            ConditionExpression="version_token = :seen",
            ExpressionAttributeValues={":seen": {"S": expected_token}},
        )

    def _conditional(self, what: str, call: Any, **kwargs: Any) -> bool:
        try:
            call(TableName=self.table, **kwargs)
        except botocore.exceptions.ClientError as exc:
            if error_code(exc) == "ConditionalCheckFailedException":
                return False
            raise classify(exc, "DynamoDB " + what) from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise classify(exc, "DynamoDB " + what) from exc
        return True

    def _key(self, bucket: str, key: str, sk: str) -> dict[str, Any]:
        return {"pk": {"S": object_pk(bucket, key)}, "sk": {"S": sk}}

    def _item(self, record: VersionRecord, sk: str) -> dict[str, Any]:
        serializer = dynamodb_serializer()
        item = {k: serializer.serialize(v) for k, v in record.to_dict().items()}
        item["pk"] = {"S": object_pk(record.bucket, record.key)}
        item["sk"] = {"S": sk}
        return item

    # -- reads -----------------------------------------------------------------------

    def get_version(self, bucket: str, key: str, version_token: str) -> VersionRecord | None:
        return self._get(bucket, key, VERSION_PREFIX + version_token)

    def latest(self, bucket: str, key: str) -> VersionRecord | None:
        item = self._get_item(bucket, key, LATEST)
        return self._latest_of(item, bucket) if item else None

    def versions(self, bucket: str, key: str) -> list[VersionRecord]:
        """Every record of a key, oldest first in the version order (agent/order.py)."""
        return history.ordered(self.stream_versions(bucket, key))

    def stream_versions(self, bucket: str, key: str) -> Iterator[VersionRecord]:
        """Every record of a key as the Query's pages bring them (in `sk` order, not the
        version order): one page in memory at a time, however long the key's history."""
        items = self._query(
            KeyConditionExpression="pk = :pk AND begins_with(sk, :v)",
            ExpressionAttributeValues={
                ":pk": {"S": object_pk(bucket, key)},
                ":v": {"S": VERSION_PREFIX},
            },
            ConsistentRead=True,
        )
        return (r for r in map(self._parsed, items) if r is not None)

    def state(self, bucket: str, key: str) -> tuple[VersionRecord | None, list[VersionRecord]]:
        """(LATEST, every record oldest first) of one key, in one Query (reconcile)."""
        latest, records = self._key_items(bucket, key)
        if latest is None:
            return None, records
        parsed = self._parsed(latest)
        if parsed is not None and _current_form(latest):
            return parsed, records
        return history.latest_entry(records), records

    def _key_items(
        self, bucket: str, key: str
    ) -> tuple[dict[str, Any] | None, list[VersionRecord]]:
        """The raw LATEST item and the records, oldest first, of one key: one Query."""
        latest: dict[str, Any] | None = None
        records: list[VersionRecord] = []
        for item in self._query(
            KeyConditionExpression="pk = :pk",
            ExpressionAttributeValues={":pk": {"S": object_pk(bucket, key)}},
            ConsistentRead=True,
        ):
            sk = _key_text(item, "sk")
            if sk == LATEST:
                latest = item
            elif sk.startswith(VERSION_PREFIX):
                record = self._parsed(item)
                if record is not None:
                    records.append(record)
        return latest, history.ordered(records)

    def keys(self, bucket: str, prefix: str = "", after: str = "") -> Iterator[VersionRecord]:
        """LATEST of every key under `prefix`, in key order (one Query per page of each
        partition of the key index, merged: agent/storage/key_index.py); with `after`,
        only the keys sorting after it (the next page of a listing)."""

        def read_page(value: str, start: dict[str, Any] | None) -> key_index.Page:
            # the pool's threads only read pages; each item is parsed here, in the
            # consumer's thread, when the merge yields it (`_latest_of`): parsing is
            # Python under the GIL, so the pool's threads would only take turns with this
            # one (find over 20,000 items from memory: 1.09 s parsed in the pool, 0.85 s
            # here), and a duplicate or an item past the prefix is never parsed
            return self._index_page(key_index.key_condition(value, prefix, after), start)

        values = key_index.partitions(bucket)
        listing = key_index.listing(read_page, values, prefix, key_index.item_key)
        with contextlib.closing(listing):  # closed with this generator: no thread outlives it
            for item in listing:
                latest = self._latest_of(item, bucket)
                if latest is not None:
                    yield latest

    def _index_page(
        self, condition: dict[str, Any], start: dict[str, Any] | None
    ) -> key_index.Page:
        """One Query of the key index (a pool thread of `key_index.listing` calls it): the
        page's items and its LastEvaluatedKey. Errors are classified as `_query`'s, and a
        LastEvaluatedKey equal to the page's start is refused as boto3's paginator does."""
        request: dict[str, Any] = {"TableName": self.table, "IndexName": KEY_INDEX, **condition}
        if start is not None:
            request["ExclusiveStartKey"] = start
        try:
            response = self._db.query(**request)
            last: dict[str, Any] | None = response.get("LastEvaluatedKey")
            if last is not None and last == start:
                raise botocore.exceptions.PaginationError(
                    message=f"The same next token was received twice: {last}"
                )
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise classify(exc, "DynamoDB Query") from exc
        items: list[dict[str, Any]] = response.get("Items", [])
        return items, last

    def migrate_key_index(self, bucket: str) -> int:
        """Move every LATEST of `bucket` an older release indexed under the bucket name
        alone to its shard (reindex, reconcile): the item as it is, only `gsi_bucket`
        changed, conditionally on it being unchanged since read (a LATEST moved meanwhile
        was written in the sharded form already). One PutItem per key; the index drops the
        old entry and adds the new one (two index writes). Returns how many moved."""
        moved = 0
        for item in self._query(
            IndexName=KEY_INDEX, **key_index.key_condition(bucket, prefix="", after="")
        ):
            key = key_index.item_key(item)
            if not key_index.is_unsharded(item, bucket) or _key_text(item, "sk") != LATEST:
                continue
            if self._conditional(
                "PutItem LATEST (index shard)",
                self._db.put_item,
                Item={**item, **key_index.index_fields(bucket, key)},
                **_unchanged(item, "version_token", "order_key", key_index.BUCKET_ATTRIBUTE),
            ):
                moved += 1
        if moved:
            log.info("ledger.key_index_migrated", bucket=bucket, moved=moved)
        return moved

    def _latest_of(self, item: dict[str, Any], bucket: str) -> VersionRecord | None:
        """A LATEST item as a record; one an older release wrote (another order) is derived
        again from the key's records, without writing (migrate on read), and so is one that
        does not parse (rejected), when its pk still names a key of `bucket`."""
        latest = self._parsed(item)
        if latest is not None and _current_form(item):
            return latest
        if latest is None:
            pk = _key_text(item, "pk")
            if not pk.startswith(bucket + "/"):
                return None
            key = pk[len(bucket) + 1 :]
        else:
            key = latest.key
        return history.latest_entry(self.versions(bucket, key))

    def _get(self, bucket: str, key: str, sk: str) -> VersionRecord | None:
        item = self._get_item(bucket, key, sk)
        return self._parsed(item) if item else None

    def _parsed(self, item: dict[str, Any]) -> VersionRecord | None:
        """The record of `item`, or None: then it is added to `rejections`."""
        parsed = parse_item(item)
        if isinstance(parsed, Rejection):
            self.rejections.add(parsed)
            return None
        return parsed

    def _get_item(self, bucket: str, key: str, sk: str) -> dict[str, Any] | None:
        try:
            response = self._db.get_item(
                TableName=self.table,
                Key={"pk": {"S": object_pk(bucket, key)}, "sk": {"S": sk}},
                ConsistentRead=True,
            )
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise classify(exc, "DynamoDB GetItem") from exc
        item: dict[str, Any] | None = response.get("Item")
        return item

    def _query(self, **kwargs: Any) -> Iterator[dict[str, Any]]:
        paginator = self._db.get_paginator("query")
        try:
            for page in paginator.paginate(TableName=self.table, **kwargs):
                yield from page.get("Items", [])
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise classify(exc, "DynamoDB Query") from exc


class _Then(enum.Enum):
    """What becomes of a record a transaction did not write (`Ledger._transact`)."""

    AGAIN = "again"  # nothing wrong with it (another record's write failed): send it again
    ALONE = "alone"  # its own write failed (or a conflict): `record` decides


_AGAIN, _ALONE = _Then.AGAIN, _Then.ALONE


@dataclasses.dataclass(frozen=True)
class _Built:
    """One record's two transaction actions, and the size of their JSON (for
    TRANSACT_BYTES)."""

    actions: list[dict[str, Any]]
    size: int


def _cancelled(sent: list[int], reasons: Any) -> dict[int, _Then]:
    """Each record of a cancelled transaction: `_ALONE` when an action of its own was
    refused (ConditionalCheckFailed, TransactionConflict, or any other code), `_AGAIN`
    when both of its actions' reasons are "None" (AWS lists one reason per action, in
    request order). Without readable reasons, or with no record refused, every record
    goes alone: each round must leave one record fewer."""
    if not isinstance(reasons, list) or len(reasons) != 2 * len(sent):
        return dict.fromkeys(sent, _ALONE)
    codes = [r.get("Code") if isinstance(r, dict) else None for r in reasons]
    outcomes: dict[int, _Then] = {}
    for position, index in enumerate(sent):
        own = codes[2 * position : 2 * position + 2]
        outcomes[index] = _AGAIN if all(c in (None, "None") for c in own) else _ALONE
    if all(outcome is _AGAIN for outcome in outcomes.values()):
        return dict.fromkeys(sent, _ALONE)
    return outcomes


def _advance_values(record: VersionRecord) -> dict[str, Any]:
    return {":order": {"S": record.order_key}, ":format": {"S": order.FORMAT}}


def _unchanged(seen: dict[str, Any], *names: str) -> dict[str, Any]:
    """A condition that `seen`'s attributes `names` are still as read: equal to the value
    read, or still absent (a malformed LATEST is replaced the same way). Names go through
    ExpressionAttributeNames (``size`` is a reserved word)."""
    terms: list[str] = []
    values: dict[str, Any] = {}
    for index, name in enumerate(names):
        value = seen.get(name)
        if isinstance(value, dict) and value:
            terms.append(f"#a{index} = :seen{index}")
            values[f":seen{index}"] = value
        else:
            terms.append(f"attribute_not_exists(#a{index})")
    condition: dict[str, Any] = {
        "ConditionExpression": " AND ".join(terms),
        "ExpressionAttributeNames": {f"#a{index}": name for index, name in enumerate(names)},
    }
    if values:
        condition["ExpressionAttributeValues"] = values
    return condition


def _current_form(item: dict[str, Any]) -> bool:
    """Was this item written with today's order key (or by an older release)?"""
    value = item.get("order_key")
    text = value.get("S") if isinstance(value, dict) else None
    return isinstance(text, str) and order.is_current(text)


def table_definition(table: str) -> dict[str, Any]:
    """CreateTable arguments (used by bootstrap and tests)."""
    return {
        "TableName": table,
        "BillingMode": "PAY_PER_REQUEST",
        "AttributeDefinitions": [
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "S"},
            {"AttributeName": "gsi_bucket", "AttributeType": "S"},
            {"AttributeName": "gsi_key", "AttributeType": "S"},
        ],
        "KeySchema": [
            {"AttributeName": "pk", "KeyType": "HASH"},
            {"AttributeName": "sk", "KeyType": "RANGE"},
        ],
        "GlobalSecondaryIndexes": [
            {
                "IndexName": KEY_INDEX,
                "KeySchema": [
                    {"AttributeName": "gsi_bucket", "KeyType": "HASH"},
                    {"AttributeName": "gsi_key", "KeyType": "RANGE"},
                ],
                "Projection": {"ProjectionType": "ALL"},
            }
        ],
    }
