"""JSON text any UTF-8 output takes (agent/json_text.py)."""

from __future__ import annotations

import io
import json

import pytest

from agent import json_text


def test_readable_characters_stay_readable() -> None:
    assert json_text.dumps({"key": "café/報告.txt"}) == '{"key": "café/報告.txt"}'
    assert json_text.dumps({"a": 1}, separators=(",", ":")) == '{"a":1}'


def test_a_lone_surrogate_is_escaped_and_the_value_unchanged() -> None:
    data = {"key": "docs/lone \ud800 surrogate", "other": "é"}
    with pytest.raises(UnicodeEncodeError):  # what the readable form does on a UTF-8 stream
        io.TextIOWrapper(io.BytesIO(), encoding="utf-8").write(json.dumps(data, ensure_ascii=False))
    text = json_text.dumps(data)
    text.encode("utf-8")  # takes it
    assert "\\ud800" in text and json.loads(text) == data
