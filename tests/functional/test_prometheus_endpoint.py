"""The Prometheus endpoint, scraped over HTTP on loopback and parsed with prometheus-client."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from agent import __version__
from agent.monitoring.alerts import AlertKind
from agent.monitoring.metrics import DiskUsage
from agent.monitoring.prometheus import PrometheusMetrics, Sources
from agent.pipeline.backup import Outcome
from agent.scheduler import JobRecord, every
from agent.stats import RECORDS_REJECTED, Stats


def scrape(port: int) -> dict[str, dict]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples: dict[str, dict] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = tuple(sorted(sample.labels.items()))
            samples.setdefault(sample.name, {})[labels] = sample.value
    return samples


@pytest.fixture
def exporter():
    stats = Stats(started_at=1000.0)
    stats.record_success("stored", 2048, 512, 3.0, now=1100.0)
    stats.record_success("deduplicated", 1024, 0, 1.0, now=1150.0)
    stats.record_failure("PermanentError")
    stats.set_in_flight(3)
    for name in ("ObjectTagging:Put", "ObjectTagging:Put", "s3:TestEvent"):
        stats.record_ignored(name)
    stats.record_archived("archived")
    stats.record_archived("sse-c")
    for result in ("read", "read", "denied"):
        stats.record_tag_request(result)
    stats.count(RECORDS_REJECTED, 2)
    job = JobRecord(
        "metrics", every(60), runs=5, failures=2, last_duration=0.25, last_success_at=1140.0
    )
    never = JobRecord("scrub", every(86400))
    metrics = PrometheusMetrics(
        Sources(
            stats=stats,
            root=Path("/mnt/backups"),
            disk=lambda root: DiskUsage(1000, 600, 400, 60.0),
            workers=lambda: 4,
            workers_busy=lambda: 3,
            jobs=lambda: [job, never],
            counters=lambda: {"BackupsGaveUp": 7},
            alerts_sent=lambda: {"backup_failed": 2},
            alerts_suppressed=lambda: {"backup_failed": 98},
            clock=lambda: 1200.0,
        )
    )
    metrics.lag.observe(3.0)
    metrics.lag.observe(1.0)
    metrics.object_bytes.observe(2048)
    metrics.queue_messages.labels("dead_letter", "visible").set(4)
    port = metrics.serve("127.0.0.1:0")
    assert port
    yield metrics, port
    metrics.close()


def test_the_endpoint_serves_counters_gauges_and_histograms(exporter):
    _, port = exporter
    s = scrape(port)
    assert s["backup_agent_backups_succeeded_total"] == {
        (("outcome", "already_done"),): 0.0,
        (("outcome", "archived"),): 0.0,
        (("outcome", "deduplicated"),): 1.0,
        (("outcome", "gone"),): 0.0,
        (("outcome", "stored"),): 1.0,
        (("outcome", "tombstoned"),): 0.0,
    }
    assert s["backup_agent_backups_failed_total"] == {(("reason", "PermanentError"),): 1.0}
    assert s["backup_agent_bytes_backed_up_total"][()] == 3072
    assert s["backup_agent_bytes_stored_total"][()] == 512
    assert s["backup_agent_backups_gave_up_total"][()] == 7
    assert s["backup_agent_events_ignored_total"] == {
        (("event", "ObjectTagging:Put"),): 2.0,
        (("event", "s3:TestEvent"),): 1.0,
    }
    assert s["backup_agent_objects_archived_total"] == {
        (("reason", "archived"),): 1.0,
        (("reason", "sse-c"),): 1.0,
    }
    assert s["backup_agent_tag_requests_total"] == {
        (("result", "denied"),): 1.0,
        (("result", "failed"),): 0.0,
        (("result", "missing"),): 0.0,
        (("result", "read"),): 2.0,
    }
    assert s["backup_agent_records_rejected_total"][()] == 2
    assert s["backup_agent_last_success_timestamp_seconds"][()] == 1150.0
    assert s["backup_agent_start_time_seconds"][()] == 1000.0
    assert s["backup_agent_messages_in_flight"][()] == 3
    assert s["backup_agent_workers"][()] == 4 and s["backup_agent_workers_busy"][()] == 3
    assert s["backup_agent_disk_used_ratio"][()] == 0.6
    assert s["backup_agent_disk_free_bytes"][()] == 400
    assert s["backup_agent_job_runs_total"] == {(("job", "metrics"),): 5.0, (("job", "scrub"),): 0}
    assert s["backup_agent_job_failures_total"] == {
        (("job", "metrics"),): 2.0,
        (("job", "scrub"),): 0,
    }
    assert s["backup_agent_job_last_success_timestamp_seconds"] == {(("job", "metrics"),): 1140.0}
    assert s["backup_agent_alerts_suppressed_total"][(("kind", "backup_failed"),)] == 98.0
    assert s["backup_agent_alerts_sent_total"][(("kind", "backup_failed"),)] == 2.0
    assert s["backup_agent_queue_messages"] == {
        (("queue", "dead_letter"), ("state", "visible")): 4.0
    }
    assert s["backup_agent_backup_lag_seconds_count"][()] == 2
    assert s["backup_agent_backup_lag_seconds_sum"][()] == 4.0
    assert s["backup_agent_backup_lag_seconds_bucket"][(("le", "2.0"),)] == 1
    assert s["backup_agent_object_bytes_count"][()] == 1


def test_a_fresh_agent_exports_every_counter_at_zero_and_no_created_series():
    """rate() needs the series before its first increment: every counter, and every label
    value known in advance, is there at 0 from the first scrape."""
    fresh = PrometheusMetrics(Sources(stats=Stats(started_at=1000.0)))
    port = fresh.serve("127.0.0.1:0")
    assert port
    try:
        s = scrape(port)
    finally:
        fresh.close()
    assert not [name for name in s if name.endswith("_created")]
    assert s["backup_agent_build_info"] == {(("version", __version__),): 1.0}
    assert "backup_agent_last_success_timestamp_seconds" not in s  # no backup yet
    assert s["backup_agent_start_time_seconds"][()] == 1000.0
    assert set(s["backup_agent_backups_succeeded_total"].values()) == {0.0}
    assert (
        len(s["backup_agent_backups_succeeded_total"]) == len(Outcome) - 1
    )  # not COMMITTING: observed as what it resolves to
    assert s["backup_agent_objects_archived_total"] == {
        (("reason", "archived"),): 0.0,
        (("reason", "sse-c"),): 0.0,
    }
    assert len(s["backup_agent_tag_requests_total"]) == 4
    kinds = {labels[0][1] for labels in s["backup_agent_alerts_sent_total"]}
    assert kinds == {kind.value for kind in AlertKind}
    assert set(s["backup_agent_alerts_suppressed_total"].values()) == {0.0}
    for name in (
        "backup_agent_bytes_backed_up_total",
        "backup_agent_bytes_stored_total",
        "backup_agent_backups_gave_up_total",
        "backup_agent_messages_held_back_total",
        "backup_agent_records_rejected_total",
    ):
        assert s[name] == {(): 0.0}, name
    assert s["process_cpu_seconds_total"][()] >= 0  # the process collector
    assert s["process_resident_memory_bytes"][()] > 0


def test_several_agents_in_one_process_have_separate_registries(exporter):
    _, port = exporter
    other = PrometheusMetrics(Sources(stats=Stats()))
    other_port = other.serve("127.0.0.1:0")
    try:
        assert scrape(other_port)["backup_agent_bytes_backed_up_total"][()] == 0
        assert scrape(port)["backup_agent_bytes_backed_up_total"][()] == 3072
    finally:
        other.close()


def test_a_busy_port_is_logged_and_does_not_raise(exporter):
    _, port = exporter
    second = PrometheusMetrics(Sources(stats=Stats()))
    with capture_logs() as logs:
        assert second.serve(f"127.0.0.1:{port}") is None
    assert logs[0]["event"] == "prometheus.listen_failed"
    second.close()


def test_the_auto_grow_state_is_a_labelled_gauge_only_when_auto_grow_is_on():
    state = {"now": None}
    metrics = PrometheusMetrics(Sources(stats=Stats(), volume_grow=lambda: state["now"]))
    port = metrics.serve("127.0.0.1:0")
    try:
        assert "backup_agent_volume_grow_state" not in scrape(port)  # off
        state["now"] = "modifying"
        assert scrape(port)["backup_agent_volume_grow_state"] == {
            (("state", "filesystem"),): 0.0,
            (("state", "idle"),): 0.0,
            (("state", "modifying"),): 1.0,
        }
    finally:
        metrics.close()
