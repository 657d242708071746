"""Two CPU costs of moto's DynamoDB that real DynamoDB does not put on this machine, taken out
(the local AWS stand-in; issue 19).

moto 5.2.5 spends, per conditional Put (bench/endpoint_profile.py, 2026-12-01, under
cProfile: 22.9 s of a TransactWriteItems total of 101 s endpoint CPU for 400 small objects):

- **Lexing the condition expression again and again.** `ConditionExpressionParser.parse`
  runs about three times per action of a transaction (the transaction's check, `put_item`'s,
  a validation), and each time lexes the text with a dozen regular expressions compiled per
  token: 12.1 s of parsing, 4.7 s of it lexing. The lexer's output is a function of the
  expression's text alone, so it is kept per text (a bounded dict) and handed out as fresh
  nodes; the rest of the parse (names, values, the tree) runs as before.
- **Sizing an item once per attribute.** `Item.__init__` sets the attributes one by one into
  a `LimitedSizeDict`, whose `__setitem__` re-sizes every attribute already set, to refuse an
  item over 405,000 bytes: quadratic in the attributes (the agent's items have about 20).
  Every term of that sum is >= 0, so the prefix sums peak at the total: checking the total
  once refuses exactly the same items, with the same `ItemSizeTooLarge`. Later writes to an
  item's attributes (UpdateItem) keep moto's own check.

`install()` is called by tests/support/moto_server.py's `install()`, so moto_server for the
benchmarks and the e2e tests, and the in-process tests (tests/conftest.py), run with it.
tests/unit/test_moto_dynamodb_fast.py runs the same requests with and without it and
compares every answer and item.
"""

from __future__ import annotations

import contextlib
from collections import deque
from typing import Any

from moto.dynamodb.comparisons import ConditionExpressionParser
from moto.dynamodb.exceptions import ItemSizeTooLarge
from moto.dynamodb.models.dynamo_type import DynamoType, Item, LimitedSizeDict
from moto.dynamodb.models.utilities import bytesize

from tests.support import patching

ITEM_LIMIT = 405_000  # moto's own figure (dynamo_type.LimitedSizeDict)
LEXED_MAX = 1024  # expressions kept; an application uses a handful

_MOTO_LEX = ConditionExpressionParser._lex_condition_expression
_MOTO_ITEM_INIT = Item.__init__
_lexed: dict[str, tuple[Any, ...]] = {}


def _lex_condition_expression(self: ConditionExpressionParser) -> deque[Any]:
    text = self.condition_expression
    if text is None:  # moto's parse does not lex a missing expression; just in case
        return _MOTO_LEX(self)
    nodes = _lexed.get(text)
    if nodes is None:
        nodes = tuple(_MOTO_LEX(self))  # raises as moto does for text it cannot lex
        if len(_lexed) < LEXED_MAX:
            _lexed[text] = nodes
    return deque(node._replace(children=[]) for node in nodes)


def _item_init(
    self: Item, hash_key: DynamoType, range_key: DynamoType | None, attrs: dict[str, Any]
) -> None:
    self.hash_key = hash_key
    self.range_key = range_key
    converted = {key: DynamoType(value) for key, value in attrs.items()}
    if sum(bytesize(key) + value.size() for key, value in converted.items()) > ITEM_LIMIT:
        raise ItemSizeTooLarge
    self.attrs = LimitedSizeDict(converted)  # dict.update: no per-attribute re-sizing


def installed() -> bool:
    return Item.__init__ is _item_init


def install() -> None:
    """Install both changes (see the module docstring) in this process."""
    ConditionExpressionParser._lex_condition_expression = _lex_condition_expression  # type: ignore[method-assign]
    Item.__init__ = _item_init  # type: ignore[method-assign]


def uninstall() -> None:
    ConditionExpressionParser._lex_condition_expression = _MOTO_LEX  # type: ignore[method-assign]
    Item.__init__ = _MOTO_ITEM_INIT  # type: ignore[method-assign]


def as_released() -> contextlib.AbstractContextManager[None]:
    """moto's DynamoDB as released while inside (as it was after): for the comparison in
    tests/unit/test_moto_dynamodb_fast.py."""
    return patching.released(installed, install, uninstall)
