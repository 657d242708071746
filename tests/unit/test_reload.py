"""ConfigReloader: validate first, apply live keys, keep restart-only keys, watch the directory."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
import yaml
from structlog.testing import capture_logs

from agent.config import Config
from agent.runtime.reload import ConfigReloader, changed_keys, effective_config, needs_restart
from tests.support.aws import make_config


def _write(path: Path, config: Config, **changes: dict) -> None:
    raw = config.model_dump(mode="json")
    for section, values in changes.items():
        raw[section] = {**raw[section], **values}
    path.write_text(yaml.safe_dump(raw))


@pytest.fixture
def setup(tmp_path, backup_root):
    config = make_config(backup_root)
    path = tmp_path / "etc" / "config.yaml"
    path.parent.mkdir()
    _write(path, config)
    return path, config


def test_live_change_is_applied_and_restart_only_change_is_reported_not_applied(setup):
    path, config = setup
    calls = []
    reloader = ConfigReloader(path, config)
    reloader.subscribe(lambda old, new: calls.append((old, new)))
    _write(path, config, consumer={"workers": 7}, state={"table": "other-table"})

    outcome = reloader.reload("test")

    assert outcome.status == "applied"
    assert outcome.applied == ("consumer.workers",)
    assert outcome.needs_restart == ("state.table",)
    assert reloader.config.consumer.workers == 7
    assert reloader.config.state.table == config.state.table  # still the running table
    assert [(o.consumer.workers, n.consumer.workers) for o, n in calls] == [(2, 7)]


def test_invalid_edit_is_rejected_logged_and_reported_and_old_config_stays(setup):
    path, config = setup
    rejected: list[list[str]] = []
    reloader = ConfigReloader(path, config, on_rejected=rejected.append)
    path.write_text(path.read_text().replace("workers: 2", "workers: zero"))

    with capture_logs() as logs:
        outcome = reloader.reload("test")

    assert outcome.status == "rejected"
    assert rejected and "consumer.workers" in rejected[0][0]
    assert reloader.config is config
    assert [e["event"] for e in logs] == ["config.reload_rejected"]


def test_unchanged_bytes_do_not_reload_unless_forced(setup):
    path, config = setup
    calls = []
    reloader = ConfigReloader(path, config)
    reloader.subscribe(lambda old, new: calls.append(new))

    assert reloader.reload("watch", force=False).status == "unchanged"
    assert reloader.reload("SIGHUP", force=True).status == "unchanged"
    assert calls == []


def test_a_failing_subscriber_does_not_stop_the_others(setup):
    path, config = setup
    seen = []
    reloader = ConfigReloader(path, config)
    reloader.subscribe(lambda old, new: 1 / 0)
    reloader.subscribe(lambda old, new: seen.append(new.logging.level))
    _write(path, config, logging={"level": "DEBUG"})

    with capture_logs() as logs:
        reloader.reload("test")

    assert seen == ["DEBUG"]
    assert "config.apply_failed" in [e["event"] for e in logs]


def test_restart_only_keys():
    assert needs_restart("queue.url") and needs_restart("aws.region")
    assert needs_restart("storage.root") and needs_restart("buckets")
    assert not needs_restart("storage.compression_level")
    assert not needs_restart("consumer.workers") and not needs_restart("alerts.recipients")
    for key in ("resume_headroom_bytes", "hold_back", "pause_recheck_max"):  # the consumer's
        assert needs_restart(f"storage.{key}")
    assert not needs_restart("alerts.days_until_full")  # the forecast takes it live


def test_effective_config_keeps_running_root_but_takes_new_compression(tmp_path):
    running = make_config(tmp_path / "a")
    edited = make_config(
        tmp_path / "b",
        storage={
            "root": str(tmp_path / "b"),
            "compression_level": 9,
            "compression_threads": 1,
            "min_free_bytes": 0,
        },
    )
    effective = effective_config(running, edited)
    assert effective.storage.root == running.storage.root
    assert effective.storage.compression_level == 9
    assert changed_keys(running, effective) == ["storage.compression_level"]


def _wait_for(reloader_calls: list, event: threading.Event) -> None:
    assert event.wait(10), f"no reload; calls so far: {reloader_calls}"


@pytest.mark.parametrize("how", ["in_place", "rename", "symlink_swap"])
def test_watcher_sees_every_way_an_editor_or_tool_replaces_the_file(tmp_path, backup_root, how):
    """In-place write, vim/sed -i style save-through-rename, and a Kubernetes ..data swap."""
    config = make_config(backup_root)
    directory = tmp_path / "etc"
    directory.mkdir()
    path = directory / "config.yaml"
    if how == "symlink_swap":
        (directory / "..v1").mkdir()
        _write(directory / "..v1" / "config.yaml", config)
        os.symlink("..v1", directory / "..data")
        os.symlink("..data/config.yaml", path)
    else:
        _write(path, config)
    applied = threading.Event()
    calls: list[int] = []
    reloader = ConfigReloader(path, config, debounce=0.05)
    reloader.subscribe(lambda old, new: (calls.append(new.consumer.workers), applied.set()))
    reloader.start()
    try:
        if how == "in_place":
            _write(path, config, consumer={"workers": 5})
        elif how == "rename":
            _write(directory / ".config.yaml.swp", config, consumer={"workers": 5})
            os.replace(directory / ".config.yaml.swp", path)
        else:
            (directory / "..v2").mkdir()
            _write(directory / "..v2" / "config.yaml", config, consumer={"workers": 5})
            os.symlink("..v2", directory / "..data_tmp")
            os.replace(directory / "..data_tmp", directory / "..data")
        _wait_for(calls, applied)
    finally:
        reloader.stop()
    assert calls == [5]
    assert reloader.config.consumer.workers == 5


def test_only_the_config_file_and_symlink_swaps_are_relevant(setup):
    path, config = setup
    reloader = ConfigReloader(path, config)
    assert reloader.relevant(str(path))
    assert reloader.relevant(str(path.parent / "..data"))
    assert reloader.relevant(str(path.parent / "..data_tmp"))
    assert not reloader.relevant(str(path.parent / "agent.log"))  # busy neighbours are ignored
    assert not reloader.relevant(str(path.parent / ".config.yaml.swp"))
