"""Every log event is one JSON line (pretty on a TTY)."""

from __future__ import annotations

import io
import json

import pytest
import structlog

from agent import logs


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _restore_logging():
    yield
    structlog.reset_defaults()


def test_events_are_json_lines_when_not_on_a_terminal():
    stream = io.StringIO()
    logs.configure("INFO", "auto", stream=stream)
    structlog.get_logger("t").info("backup.stored", key="a b.txt", bytes=3)
    (line,) = stream.getvalue().splitlines()
    record = json.loads(line)
    assert record["event"] == "backup.stored"
    assert record["level"] == "info"
    assert (record["key"], record["bytes"]) == ("a b.txt", 3)
    assert record["timestamp"].endswith("Z")


def test_events_are_readable_text_on_a_terminal():
    stream = Terminal()
    logs.configure("INFO", "auto", stream=stream)
    structlog.get_logger("t").info("backup.stored", key="a")
    output = stream.getvalue()
    assert "backup.stored" in output
    with pytest.raises(ValueError):
        json.loads(output)


def test_the_level_filters_events():
    stream = io.StringIO()
    logs.configure("WARNING", "json", stream=stream)
    log = structlog.get_logger("t")
    log.info("quiet")
    log.warning("loud")
    assert [json.loads(line)["event"] for line in stream.getvalue().splitlines()] == ["loud"]
