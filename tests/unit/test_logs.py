"""Every log event is one JSON line (pretty on a TTY)."""

from __future__ import annotations

import io
import json
import logging
import os

import pytest
import structlog

from agent import logs


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _restore_logging():
    root = logging.getLogger()
    level = root.level
    libraries = {name: logging.getLogger(name).level for name in logs.LIBRARY_LOGGERS}
    yield
    structlog.reset_defaults()
    for handler in [h for h in root.handlers if isinstance(h, logs._StdlibHandler)]:
        root.removeHandler(handler)
    root.setLevel(level)
    for name, old in libraries.items():
        logging.getLogger(name).setLevel(old)


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


def _journal_file(tmp_path, monkeypatch):
    handle = (tmp_path / "journal").open("w+")
    info = os.fstat(handle.fileno())
    monkeypatch.setenv("JOURNAL_STREAM", f"{info.st_dev}:{info.st_ino}")
    return handle


def test_lines_to_the_journal_carry_their_syslog_priority(tmp_path, monkeypatch):
    handle = _journal_file(tmp_path, monkeypatch)
    with handle:
        logs.configure("DEBUG", "auto", stream=handle)
        log = structlog.get_logger("t")
        log.debug("d")
        log.info("i")
        log.warning("w")
        log.error("e")
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("x")
        handle.seek(0)
        lines = handle.read().splitlines()
    assert [line[:3] for line in lines] == ["<7>", "<6>", "<4>", "<3>", "<3>"]
    assert json.loads(lines[2][3:])["event"] == "w"  # the rest is still one JSON document


def test_no_prefix_when_the_stream_is_not_the_journals(tmp_path, monkeypatch):
    monkeypatch.setenv("JOURNAL_STREAM", "1:2")  # another stream (a child's, say)
    stream = (tmp_path / "log").open("w+")
    with stream:
        logs.configure("INFO", "auto", stream=stream)
        structlog.get_logger("t").warning("w")
        stream.seek(0)
        assert stream.read().startswith("{")
    assert not logs.journal_stream(io.StringIO())


def test_stdlib_records_are_rendered_like_the_agents_events():
    """botocore, urllib3, APScheduler log through the stdlib: JSON output stays JSON."""
    stream = io.StringIO()
    logs.configure("INFO", "json", stream=stream)
    logging.getLogger("botocore.credentials").warning("Refreshing %s", "credentials")
    structlog.get_logger("t").info("backup.stored")
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["event"] == "Refreshing credentials"
    assert (first["level"], first["logger"]) == ("warning", "botocore.credentials")
    assert first["timestamp"].endswith("Z")
    assert second["event"] == "backup.stored"


def test_libraries_are_held_at_warning_and_the_agents_level_applies_to_the_rest():
    stream = io.StringIO()
    logs.configure("INFO", "json", stream=stream)
    logging.getLogger("botocore.endpoint").info("Making request")  # wire chatter: held back
    logging.getLogger("apscheduler.executors.default").info("Job executed successfully")
    logging.getLogger("urllib3.connectionpool").warning("Retrying")
    logging.getLogger("other").info("a library nobody named")
    logging.getLogger("other").warning("its warning")
    events = [json.loads(line)["event"] for line in stream.getvalue().splitlines()]
    assert events == ["Retrying", "its warning"]

    stream = io.StringIO()
    logs.configure("ERROR", "json", stream=stream)  # one setting: a stricter level wins
    logging.getLogger("urllib3.connectionpool").warning("Retrying")
    logging.getLogger("botocore").error("failed")
    assert [json.loads(line)["event"] for line in stream.getvalue().splitlines()] == ["failed"]


def test_configuring_again_replaces_the_handler_instead_of_doubling_lines():
    first, second = io.StringIO(), io.StringIO()
    logs.configure("INFO", "json", stream=first)
    logs.configure("INFO", "json", stream=second)  # a reload
    logging.getLogger("botocore").warning("once")
    assert first.getvalue() == ""
    assert len(second.getvalue().splitlines()) == 1


def test_stdlib_records_to_the_journal_carry_their_priority(tmp_path, monkeypatch):
    handle = _journal_file(tmp_path, monkeypatch)
    with handle:
        logs.configure("INFO", "auto", stream=handle)
        logging.getLogger("botocore").warning("w")
        logging.getLogger("apscheduler").error("e")
        handle.seek(0)
        lines = handle.read().splitlines()
    assert [line[:3] for line in lines] == ["<4>", "<3>"]
    assert json.loads(lines[0][3:])["logger"] == "botocore"


def test_at_debug_a_library_stays_at_warning_so_watchdog_cannot_feed_on_the_log_file():
    """The agent's log file beside the watched config.yaml: watchdog logged each inotify event
    at DEBUG, each line was another event (seen: test_live_reload stalled the agent)."""
    stream = io.StringIO()
    logs.configure("DEBUG", "json", stream=stream)
    logging.getLogger("watchdog.observers.inotify_buffer").debug("in-event IN_MODIFY")
    logging.getLogger("some.library").info("chatter")
    structlog.get_logger("agent").debug("the agent's own debug")
    events = [json.loads(line)["event"] for line in stream.getvalue().splitlines()]
    assert events == ["the agent's own debug"]
    assert not logging.getLogger("watchdog").isEnabledFor(logging.INFO)


class Writes(io.StringIO):
    """Records each write() call."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def write(self, text: str) -> int:
        self.calls.append(text)
        return super().write(text)


def test_each_event_is_one_write_so_a_librarys_line_cannot_land_inside_it():
    stream = Writes()
    logs.configure("INFO", "json", stream=stream)
    structlog.get_logger("agent").info("audit.recorded", action="config-reload")
    logging.getLogger("botocore").warning("from another thread")
    assert len(stream.calls) == 2 and all(call.endswith("\n") for call in stream.calls)
    assert all(json.loads(call) for call in stream.calls)
