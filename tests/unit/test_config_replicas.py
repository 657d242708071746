"""`fleet.replicas`: validated, the error names the key; the fan-out's names derived from
the queue every member of a group consumes (docs/fleet.md "Replicas")."""

from __future__ import annotations

from typing import Any

import pytest

from agent.config import parse_config, replica_group, replica_groups
from agent.errors import ConfigError
from agent.runtime.reload import needs_restart

PREFIX = "https://sqs.eu-west-1.amazonaws.com/123456789012/"


def raw(tmp_path, queue: str, **sections: Any) -> dict[str, Any]:
    return {
        "queue": {"url": PREFIX + queue},
        "buckets": ["company-documents"],
        "storage": {"root": str(tmp_path)},
        "state": {"table": "backup-agent-objects"},
        **sections,
    }


def problems(document: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(document)
    return caught.value.problems


def test_without_the_section_there_is_one_replica_and_no_group(tmp_path):
    config = parse_config(raw(tmp_path, "backup-events"))
    assert config.fleet.replicas == 1
    assert replica_groups(config) is None and replica_group(config) is None


def test_a_group_queue_names_the_topic_and_every_groups_queue(tmp_path):
    config = parse_config(raw(tmp_path, "backup-events-2", fleet={"replicas": 3}))
    groups = replica_groups(config)
    assert groups is not None
    assert groups.queues == ["backup-events-1", "backup-events-2", "backup-events-3"]
    assert groups.topic == "backup-events-fanout"
    assert replica_group(config) == "backup-events-2"


@pytest.mark.parametrize(
    ("queue", "fleet", "expected"),
    [
        ("backup-events", {"replicas": 2}, "fleet.replicas: 2 needs queue.url to name"),
        ("backup-events-3", {"replicas": 2}, "<base>-1 … <base>-2, not 'backup-events-3'"),
        ("backup-events-0", {"replicas": 2}, "not 'backup-events-0'"),
        ("backup-events-1", {"replicas": 0}, "fleet.replicas: input should be greater than"),
        ("backup-events-1", {"replicas": 11}, "fleet.replicas: input should be less than"),
        ("backup-events-1", {"replicas": "two"}, "fleet.replicas: input should be a valid int"),
        ("backup-events-1", {"replica": 2}, "fleet.replica: unknown key"),
    ],
)
def test_a_bad_fleet_section_is_refused_naming_the_key(tmp_path, queue, fleet, expected):
    found = problems(raw(tmp_path, queue, fleet=fleet))
    assert any(p.startswith("fleet.") and expected in p for p in found), found


def test_with_replicas_a_dead_letter_queue_must_be_the_groups_own(tmp_path):
    document = raw(tmp_path, "backup-events-1", fleet={"replicas": 2})
    document["queue"]["dead_letter_url"] = PREFIX + "shared-dlq"
    [problem] = problems(document)
    assert problem.startswith("fleet.replicas: 2 needs queue.dead_letter_url unset or")
    document["queue"]["dead_letter_url"] = PREFIX + "backup-events-1-dlq"
    assert parse_config(document).queue.dead_letter_name == "backup-events-1-dlq"


def test_replicas_change_only_with_a_restart():
    assert needs_restart("fleet.replicas")
