"""The fleet benchmark (bench/fleet.py) keeps each member's agent log out of the directory
of its config.yaml, which the agent watches for edits (every log line there woke the
watcher: bench/stack.py's `start_agent` does the same for section 2), and starts its meter
once every member's start-up check has ended (`AgentRun.wait_settled`)."""

from __future__ import annotations

from pathlib import Path

import pytest

import bench.fleet as fleet_bench
from bench.fleet import Fleet, Group, Member


def fleet_of(root: Path, groups: int = 2, members: int = 2) -> Fleet:
    """A fleet laid out as make_fleet lays it out: <workdir>/g<g>-member-<m>/config.yaml."""
    fleet = Fleet("t", setup=None, groups=[])  # type: ignore[arg-type]  # measure stops first
    for g in range(groups):
        group = Group(f"queue-{g}")
        for m in range(members):
            workdir = root / f"g{g}-member-{m}"
            (workdir / "volume").mkdir(parents=True)
            (workdir / "config.yaml").write_text("{}\n", encoding="utf-8")
            group.members.append(Member(workdir / "config.yaml", workdir / "volume", f"vol-{g}{m}"))
        fleet.groups.append(group)
    return fleet


def test_each_members_log_is_its_own_and_outside_its_configs_directory(tmp_path: Path) -> None:
    members = fleet_of(tmp_path).members
    paths = [member.log_path for member in members]
    assert len(set(paths)) == len(members)
    for member, path in zip(members, paths, strict=True):
        assert path.parent == tmp_path / "logs"
        assert member.config_path.parent not in path.parents  # not in the watched directory
        assert path.name == f"{member.config_path.parent.name}.log"


class Metering(Exception):
    """Stops `measure` where its meter starts (the agents' CPU read first): nothing is fed."""


def test_measure_starts_the_agents_with_those_logs_and_meters_once_they_settled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fleet = fleet_of(tmp_path)
    calls: list[tuple[str, Path]] = []

    class Process:
        def __init__(self, config_path: Path, log_path: Path) -> None:
            self.config_path, self.log_path = config_path, log_path
            self.pid = 0

    class Run:
        def __init__(self, process: Process) -> None:
            self.process = process

        def start(self) -> None:
            assert self.process.log_path.parent.is_dir()
            calls.append(("start", self.process.log_path))

        def wait_settled(self) -> None:
            calls.append(("settled", self.process.log_path))

        def stop(self) -> None:
            calls.append(("stop", self.process.log_path))

    monkeypatch.setattr(fleet_bench, "AgentProcess", Process)

    def meter(pid: int) -> None:
        calls.append(("meter", Path()))
        raise Metering

    monkeypatch.setattr(fleet_bench, "AgentRun", Run)
    monkeypatch.setattr(fleet_bench.psutil, "Process", meter)
    with pytest.raises(Metering):
        fleet_bench.measure(fleet, [], depth=1)

    expected = {member.log_path for member in fleet.members}
    for step in ("start", "settled", "stop"):
        assert {path for name, path in calls if name == step} == expected, step
    starts = [i for i, (name, _) in enumerate(calls) if name == "start"]
    settles = [i for i, (name, _) in enumerate(calls) if name == "settled"]
    metered = [i for i, (name, _) in enumerate(calls) if name == "meter"]
    assert max(starts) < min(settles)  # every member started before any is waited on
    assert max(settles) < min(metered)  # and all settled before the meter starts
    assert not any(p.name == "agent.log" for p in tmp_path.rglob("*"))
