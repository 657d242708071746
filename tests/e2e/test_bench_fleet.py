"""The benchmark's fleet section (bench/fleet.py) at a tiny scale, so that it cannot rot:
real agent processes behind the latency proxy, and the copies counted on their volumes."""

from __future__ import annotations

import pytest

from bench.fleet import Copies, section
from bench.report import Report
from bench.settings import Settings
from bench.stack import Endpoint

pytestmark = pytest.mark.e2e


def test_the_fleet_section_measures_two_agents_and_counts_every_copy_once(
    tmp_path, moto_server, monkeypatch, capsys
):
    for name, value in {
        "BENCH_ONLY": "fleet",
        "BENCH_FLEET_AGENTS": "2",
        "BENCH_FLEET_OBJECTS": "10",
        "BENCH_FLEET_KB": "1",
        "BENCH_FLEET_WORKERS": "1",
        "BENCH_FLEET_DEPTH": "5",  # 10 in all: the feeder sends batches of 10
        "BENCH_FLEET_LATENCY_MS": "5",
    }.items():
        monkeypatch.setenv(name, value)
    settings = Settings.from_env()
    assert settings.sections == ("fleet",)
    report = Report()
    with Endpoint(tmp_path, moto_server.endpoint) as endpoint:
        runs = section(settings, tmp_path, endpoint, report)

    [run] = runs.values()
    assert (run.members, run.groups, run.count) == (2, 1, 20)
    assert run.copies == Copies(
        versions=20, copies=20, twice=0, missing=0, journal_twice=0, unrecorded=0, misplaced=0
    )
    assert run.rate > 0
    # every agent call went through the proxy: a GET each, the ledger's transactions (one
    # per batch of records), the receives and deletes
    assert run.calls["s3.GetObject"] >= run.count
    assert run.calls["dynamodb.TransactWriteItems"] >= 1
    assert run.calls["sqs.ReceiveMessage"] >= 1 and run.calls["sqs.DeleteMessageBatch"] >= 1
    [summary] = report.summary
    assert summary.startswith("fleet 2/2 agents 1.00x")
    # replicas: 2 (two groups of two agents, each event to both queues): every version on
    # exactly two volumes, one per group
    assert summary.endswith(", 0 copied twice; replicas 2: 20/20 on exactly 2 volumes")
    out = capsys.readouterr().out
    assert "7. fleet: 2 agents on one queue and one table" in out
    assert "every AWS call +5 ms (proxy)" in out
