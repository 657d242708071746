"""DynamoDB's JSON responses parsed without walking botocore's shapes for every attribute.

botocore's JSON protocol parser turns a response body into Python by walking the operation's
output shape: for each attribute of each item it looks up a handler for AttributeValue, then
for each of its ten members (S, N, B, SS, NS, BS, M, L, NULL, BOOL) the member's shape and
handler. An online restore's Query pages (10,000 items) cost ~3.8 CPU-s in that walk, 550,000
`_parse_shape` calls (issue 19, docs/benchmarks.md). The decoded JSON already is the answer
for every member but B and BS (base64): `DynamoDBJSONParser` builds AttributeValue,
AttributeMap (and every other map of AttributeValue: Key, MapAttributeValue, ...), ItemList and
ListAttributeValue straight from it and leaves everything else to botocore's own walk, errors
included.

What botocore does, and this parser does too (botocore 1.44, parsers.py `BaseJSONParser`):
AttributeValue is a plain structure, not a tagged union: each of the ten members present and
not null is kept, several at once if several are sent; unknown members and null members are
dropped (``{"X": 1}`` -> ``{}``); a null AttributeValue stays None. Strings, numbers and
booleans are taken as JSON gave them, whatever their type; B and BS go through the parser's
blob parser (base64). Lists keep null elements as None. A value of an unexpected JSON type (an
AttributeValue that is not an object, an M that is not an object, an L or set that is not an
array) is handed to botocore's own walk as a whole, which gives whatever botocore gives: an
AttributeError for a non-object, a list of characters for a string "SS", ...
tests/unit/test_dynamodb_wire.py compares the two on random responses.

The shapes are recognised by their name and their whole structure (the ten members with their
types), so another JSON service's shape that happens to share a name is parsed by botocore.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from botocore.model import Shape
from botocore.parsers import JSONParser, ResponseParserFactory

# AttributeValue's members in the model's order (botocore keeps it in the parsed dict), with
# the type of each member's shape and, for lists and maps, of what they hold.
_MEMBERS: tuple[tuple[str, str, str | None], ...] = (
    ("S", "string", None),
    ("N", "string", None),
    ("B", "blob", None),
    ("SS", "list", "string"),
    ("NS", "list", "string"),
    ("BS", "list", "blob"),
    ("M", "map", "structure"),
    ("L", "list", "structure"),
    ("NULL", "boolean", None),
    ("BOOL", "boolean", None),
)
_ORDER = tuple(name for name, _, _ in _MEMBERS)
_PLAIN = frozenset(("S", "N", "NULL", "BOOL"))  # taken as JSON gave them
_LISTS = frozenset(("SS", "NS"))  # lists of plain values


def is_attribute_value(shape: Shape | None) -> bool:
    """Is `shape` DynamoDB's AttributeValue, member for member as this parser reads it?"""
    if shape is None or shape.name != "AttributeValue" or shape.type_name != "structure":
        return False
    if getattr(shape, "is_tagged_union", True) or getattr(shape, "is_document_type", True):
        return False
    members: dict[str, Shape] = shape.members  # type: ignore[attr-defined]
    if tuple(members) != _ORDER:
        return False
    for name, kind, inner in _MEMBERS:
        member = members[name]
        if member.type_name != kind or member.serialization.get("name", name) != name:
            return False
        if kind == "list":
            held: Shape = member.member  # type: ignore[attr-defined]
            if held.type_name != inner:
                return False
            if inner == "structure" and held.name != "AttributeValue":
                return False
        elif kind == "map":
            if member.key.type_name != "string":  # type: ignore[attr-defined]
                return False
            if member.value.name != "AttributeValue":  # type: ignore[attr-defined]
                return False
    return True


def _holds_attribute_values(shape: Shape) -> bool:
    """A map of string -> AttributeValue (AttributeMap, Key, MapAttributeValue, ...)."""
    key: Shape = shape.key  # type: ignore[attr-defined]
    return key.type_name == "string" and is_attribute_value(shape.value)  # type: ignore[attr-defined]


# botocore's own handlers (private, so not in botocore-stubs): the walk everything else takes.
_STOCK: Any = JSONParser


class DynamoDBJSONParser(JSONParser):
    """botocore's JSON protocol parser with DynamoDB's attribute values read directly."""

    _blob_parser: Callable[[Any], Any]  # set by botocore's ResponseParser.__init__
    _parse_shape: Callable[[Shape, Any], Any]

    def _handle_structure(self, shape: Shape, value: Any) -> Any:
        if value.__class__ is dict and is_attribute_value(shape):
            return self._value(shape, value)
        return _STOCK._handle_structure(self, shape, value)

    def _handle_map(self, shape: Shape, value: Any) -> Any:
        if value.__class__ is dict and _holds_attribute_values(shape):
            return self._item(shape.value, value)  # type: ignore[attr-defined]
        return _STOCK._handle_map(self, shape, value)

    def _handle_list(self, shape: Shape, node: Any) -> Any:
        if node.__class__ is list:
            member: Shape = shape.member  # type: ignore[attr-defined]
            if member.type_name == "map" and _holds_attribute_values(member):
                item = self._item
                attribute = member.value  # type: ignore[attr-defined]
                return [
                    None
                    if each is None
                    else item(attribute, each)
                    if each.__class__ is dict
                    else _STOCK._handle_map(self, member, each)
                    for each in node
                ]
            if is_attribute_value(member):
                return self._values(member, node)
        return _STOCK._handle_list(self, shape, node)

    def _values(self, attribute: Shape, node: list[Any]) -> list[Any]:
        """A list of AttributeValue (an L), from its decoded JSON array: None kept, a
        value that is not an object left to botocore's walk."""
        value = self._value
        return [
            None
            if each is None
            else value(attribute, each)
            if each.__class__ is dict
            else _STOCK._handle_structure(self, attribute, each)
            for each in node
        ]

    def _item(self, attribute: Shape, item: dict[str, Any]) -> dict[str, Any]:
        """A map of AttributeValue (an item, a key, an M), from its decoded JSON object.

        An attribute of one plain member (S, N, NULL, BOOL) not null, nearly every one,
        is botocore's result as it is: the decoded object is kept, not rebuilt."""
        value = self._value
        plain = _PLAIN
        parsed: dict[str, Any] = {}
        for name, each in item.items():
            if each.__class__ is dict:
                if len(each) == 1 and each.keys() <= plain and None not in each.values():
                    parsed[name] = each
                else:
                    parsed[name] = value(attribute, each)
            elif each is None:
                parsed[name] = None
            else:
                parsed[name] = _STOCK._handle_structure(self, attribute, each)
        return parsed

    def _value(self, attribute: Shape, value: dict[str, Any]) -> Any:
        """One AttributeValue, from its decoded JSON object."""
        if len(value) == 1:  # the common case: one member
            for tag, each in value.items():
                if tag in _PLAIN:
                    return {tag: each} if each is not None else {}
                if each is None or tag not in _ORDER:
                    return {}
                converted = self._member(attribute, tag, each)
                return {tag: converted}
        parsed: dict[str, Any] = {}
        for tag in _ORDER:
            each = value.get(tag)
            if each is not None:
                parsed[tag] = each if tag in _PLAIN else self._member(attribute, tag, each)
        return parsed

    def _member(self, attribute: Shape, tag: str, each: Any) -> Any:
        """An AttributeValue's B, SS, NS, BS, M or L member (not null)."""
        if tag == "B":
            return self._blob_parser(each)
        if tag == "M":
            if each.__class__ is dict:
                return self._item(attribute, each)
        elif each.__class__ is list:
            if tag in _LISTS:
                return list(each)
            if tag == "BS":
                blob: Callable[[Any], Any] = self._blob_parser
                return [None if one is None else blob(one) for one in each]
            return self._values(attribute, each)
        members: dict[str, Shape] = attribute.members  # type: ignore[attr-defined]
        return self._parse_shape(members[tag], each)  # botocore's walk decides


class DynamoDBParserFactory(ResponseParserFactory):
    """The session's response parser factory, with `DynamoDBJSONParser` for the JSON
    protocol (DynamoDB's; SQS's too, whose shapes it leaves to botocore)."""

    _defaults: dict[str, Any]  # set by ResponseParserFactory.__init__

    def create_parser(self, protocol_name: str) -> Any:
        if protocol_name == "json":
            return DynamoDBJSONParser(**self._defaults)
        return super().create_parser(protocol_name)
