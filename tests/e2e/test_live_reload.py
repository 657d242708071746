"""Editing config.yaml under the running agent: live keys apply, bad edits are rejected."""

from __future__ import annotations

import os
import signal

import yaml

from tests.support.aws import BUCKET


def _edit(stack, **changes) -> None:
    raw = yaml.safe_load(stack.config_path.read_text())
    for section, values in changes.items():
        raw[section] = {**raw[section], **values}
    tmp = stack.config_path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(raw))
    os.replace(tmp, stack.config_path)  # how most editors save


def test_valid_edit_applies_live_and_restart_only_keys_are_reported(stack):
    agent = stack.start_agent()
    agent.wait_for("agent.started")

    _edit(stack, consumer={"workers": 5}, logging={"level": "DEBUG"}, state={"table": "elsewhere"})

    reloaded = agent.wait_for("config.reloaded")[0]
    assert reloaded["applied"] == ["consumer.workers", "logging.level"]
    assert reloaded["needs_restart"] == ["state.table"]
    assert agent.wait_for("config.needs_restart")[0]["keys"] == ["state.table"]
    stack.clients.s3.put_object(Bucket=BUCKET, Key="after-reload.txt", Body=b"x" * 100)
    agent.wait_for("backup.stored")  # still writing to the running table
    stack.clients.sqs.send_message(QueueUrl=stack.config.queue.url, MessageBody="{not json")
    agent.wait_for("message.visibility")  # a DEBUG event: the new log level is live


def test_invalid_edit_is_rejected_and_the_agent_keeps_backing_up(stack):
    agent = stack.start_agent()
    agent.wait_for("agent.started")
    stack.config_path.write_text(stack.config_path.read_text() + "\nunknown_section: {}\n")

    rejected = agent.wait_for("config.reload_rejected")[0]
    assert rejected["problems"] == ["unknown_section: unknown key"]
    stack.clients.s3.put_object(Bucket=BUCKET, Key="still-working.txt", Body=b"y" * 100)
    agent.wait_for("backup.stored")
    assert agent.process.poll() is None


def test_sighup_reloads_even_without_a_file_change(stack):
    agent = stack.start_agent()
    agent.wait_for("agent.started")
    agent.wait_for("config.watching")

    agent.process.send_signal(signal.SIGHUP)

    unchanged = agent.wait_for("config.unchanged")[0]
    assert unchanged["reason"] == "SIGHUP"
    assert agent.process.poll() is None
    assert agent.stop() == 0
