"""config.yaml validation: precise problems, check-config exit codes, which file is read."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
import structlog
import yaml
from structlog.testing import capture_logs

from agent import config as config_module
from agent.cli import agent as cli
from agent.cli.common import ExitCode
from agent.config import (
    CONFIG_ENV_VAR,
    DEFAULT_CONFIG_PATH,
    load_config,
    parse_config,
    resolve_config_path,
)
from agent.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _restore_logging():
    """cli.main() points structlog at this test's captured stderr; undo that afterwards."""
    yield
    structlog.reset_defaults()


def valid(root: Path) -> dict:
    return {
        "aws": {"region": "us-east-1"},
        "queue": {"url": "https://sqs.us-east-1.amazonaws.com/123456789012/backup-events"},
        "buckets": ["company-documents"],
        "storage": {"root": str(root)},
        "state": {"table": "backup-agent-objects"},
    }


def problems_of(raw: object) -> list[str]:
    with pytest.raises(ConfigError) as raised:
        parse_config(raw)
    return raised.value.problems


def write(path: Path, raw: object) -> Path:
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


# -- problems name the key and say what is wrong --------------------------------------------


def test_a_minimal_config_is_valid_and_fills_defaults(tmp_path):
    config = parse_config(valid(tmp_path))
    assert config.queue.wait_time_seconds == 20
    assert config.storage.compression_level == 3
    assert config.aws.endpoint_url is None


def test_missing_queue_url_is_reported_by_its_path(tmp_path):
    raw = valid(tmp_path)
    raw["queue"] = {}
    assert problems_of(raw) == ["queue.url: field required"]


def test_every_problem_is_reported_at_once(tmp_path):
    raw = valid(tmp_path)
    del raw["state"]
    raw["queue"] = {"wait_time_seconds": 20}
    raw["buckets"] = []
    assert sorted(problems_of(raw)) == [
        "buckets: list should have at least 1 item after validation, not 0",
        "queue.url: field required",
        "state: field required",
    ]


def test_unknown_keys_are_errors_at_any_level(tmp_path):
    raw = valid(tmp_path)
    raw["queue"]["ulr"] = "typo"
    raw["bucket"] = ["typo"]
    assert sorted(problems_of(raw)) == ["bucket: unknown key", "queue.ulr: unknown key"]


@pytest.mark.parametrize(
    ("section", "key", "value", "problem"),
    [
        (
            "consumer",
            "workers",
            "many",
            "consumer.workers: input should be a valid integer, unable to parse string as an"
            " integer",
        ),
        ("consumer", "workers", 0, "consumer.workers: input should be greater than or equal to 1"),
        (
            "storage",
            "compression_level",
            23,
            "storage.compression_level: input should be less than or equal to 22",
        ),
        ("aws", "retry_mode", "eager", "aws.retry_mode: input should be 'standard' or 'adaptive'"),
        ("queue", "url", "sqs/backup-events", "queue.url: 'sqs/backup-events' is not a queue URL"),
    ],
)
def test_wrong_values_name_the_key(tmp_path, section, key, value, problem):
    raw = valid(tmp_path)
    raw.setdefault(section, {})[key] = value
    (reported,) = problems_of(raw)
    assert reported.startswith(problem)


def test_a_section_of_the_wrong_type(tmp_path):
    raw = valid(tmp_path)
    raw["storage"] = "/mnt/backups"
    (reported,) = problems_of(raw)
    assert reported.startswith("storage: input should be a valid dictionary")


def test_storage_root_must_be_absolute(tmp_path):
    raw = valid(tmp_path)
    raw["storage"]["root"] = "mnt/backups"
    assert problems_of(raw) == ["storage.root: mnt/backups is not an absolute path"]


def test_bucket_names_are_checked(tmp_path):
    raw = valid(tmp_path)
    raw["buckets"] = ["company-documents", "a/b"]
    assert problems_of(raw) == ["buckets: 'a/b' is not a bucket name"]


def test_a_top_level_list_is_not_a_config():
    assert problems_of(["queue"]) == ["(top level): expected a mapping of sections, got list"]


def test_sections_are_frozen(tmp_path):
    config = parse_config(valid(tmp_path))
    with pytest.raises(ValueError, match="frozen"):
        config.queue.url = "https://elsewhere"


# -- the file itself -------------------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError) as raised:
        load_config(tmp_path / "nope.yaml")
    assert raised.value.problems == [f"{tmp_path / 'nope.yaml'}: no such file"]


def test_unreadable_file(tmp_path):
    # A directory where the file should be: unreadable even for root (tests may run as root).
    with pytest.raises(ConfigError) as raised:
        load_config(tmp_path)
    assert raised.value.problems == [f"{tmp_path}: cannot read (Is a directory)"]


def test_file_that_is_not_utf8(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_bytes(b"queue:\n  url: caf\xe9\n")
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    assert raised.value.problems == [f"{path}: not UTF-8 text"]


def test_bad_yaml_reports_the_line(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("queue:\n  url: https://x\n\tbuckets: [a]\n", encoding="utf-8")
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    assert raised.value.problems == [f"{path}: not valid YAML at line 3, column 1"]


def test_empty_file_lists_every_required_section(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("# nothing yet\n", encoding="utf-8")
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    assert sorted(raised.value.problems) == [
        "buckets: field required",
        "queue: field required",
        "state: field required",
        "storage: field required",
    ]


def test_the_shipped_example_config_is_valid():
    config = load_config(REPO / "config.yaml")
    assert config.buckets == ["company-documents"]
    assert str(config.storage.root) == "/mnt/backups"


# -- backup-agent check-config ---------------------------------------------------------------


def test_check_config_exits_0_for_a_good_file(tmp_path, capsys):
    path = write(tmp_path / "config.yaml", valid(tmp_path))
    assert cli.main(["check-config", "--config", str(path)]) == ExitCode.OK
    assert capsys.readouterr().out == f"{path}: OK\n"


def test_check_config_exits_2_and_prints_every_problem(tmp_path, capsys):
    raw = valid(tmp_path)
    raw["queue"] = {}
    raw["extra"] = 1
    path = write(tmp_path / "config.yaml", raw)
    assert cli.main(["check-config", "--config", str(path)]) == ExitCode.USAGE
    err = capsys.readouterr().err
    assert err.splitlines() == [
        f"{path}: invalid configuration",
        "  queue.url: field required",
        "  extra: unknown key",
    ]


def test_check_config_reports_a_root_that_is_not_a_directory(tmp_path, capsys):
    raw = valid(tmp_path / "x")
    path = write(tmp_path / "config.yaml", raw)
    assert cli.main(["check-config", "--config", str(path)]) == ExitCode.USAGE
    assert f"  storage.root: {tmp_path / 'x'} is not a directory" in capsys.readouterr().err


def test_check_config_with_a_missing_file_exits_2(tmp_path, capsys):
    missing = tmp_path / "missing.yaml"
    assert cli.main(["check-config", "--config", str(missing)]) == ExitCode.USAGE
    assert f"{missing}: no such file" in capsys.readouterr().err


# -- which file: --config, then $BACKUP_AGENT_CONFIG, then /etc/backup-agent/config.yaml ---


def test_resolution_order(monkeypatch):
    monkeypatch.delenv(CONFIG_ENV_VAR, raising=False)
    assert resolve_config_path(None) == DEFAULT_CONFIG_PATH == Path("/etc/backup-agent/config.yaml")
    monkeypatch.setenv(CONFIG_ENV_VAR, "/from/env.yaml")
    assert resolve_config_path(None) == Path("/from/env.yaml")
    assert resolve_config_path("/from/flag.yaml") == Path("/from/flag.yaml")


def test_check_config_reads_the_environment_variable_without_flag(tmp_path, monkeypatch, capsys):
    path = write(tmp_path / "env.yaml", valid(tmp_path))
    monkeypatch.setenv(CONFIG_ENV_VAR, str(path))
    assert cli.main(["check-config"]) == ExitCode.OK
    assert capsys.readouterr().out == f"{path}: OK\n"


def test_the_flag_wins_over_the_environment_variable(tmp_path, monkeypatch, capsys):
    good = write(tmp_path / "env.yaml", valid(tmp_path))
    bad = write(tmp_path / "flag.yaml", {"queue": {}})
    monkeypatch.setenv(CONFIG_ENV_VAR, str(good))
    assert cli.main(["check-config", "--config", str(bad)]) == ExitCode.USAGE
    assert f"{bad}: invalid configuration" in capsys.readouterr().err


def test_init_volume_writes_the_marker_and_check_config_still_passes(tmp_path, capsys):
    root = tmp_path / "backups"  # empty: init-volume refuses a directory holding files
    root.mkdir()
    path = write(tmp_path / "config.yaml", valid(root))
    assert cli.main(["init-volume", "--config", str(path), "--volume-id", "vol-abc"]) == 0
    assert capsys.readouterr().out == f"{root}: backup volume vol-abc\n"
    assert (root / ".backup-agent-volume").is_file()
    assert cli.main(["check-config", "--config", str(path)]) == ExitCode.OK


def test_init_volume_on_a_missing_root_exits_3(tmp_path, capsys):
    path = write(tmp_path / "config.yaml", valid(tmp_path / "unmounted"))
    assert cli.main(["init-volume", "--config", str(path)]) == ExitCode.VOLUME_NOT_READY
    assert "backup volume not ready" in capsys.readouterr().err


# -- one grammar for every schedule key, one Duration for every length of time ---------------

SCHEDULE_KEYS = [
    ("reconcile", "schedule"),
    ("retention", "schedule"),
    ("gc", "schedule"),
    ("scrub", "schedule"),
    ("snapshots", "schedule"),
    ("schedules", "metrics"),
    ("schedules", "digest"),
]


def with_value(root: Path, section: str, key: str, value: object) -> dict:
    raw = valid(root)
    raw.setdefault(section, {})[key] = value
    return raw


@pytest.fixture
def warned(monkeypatch):
    """A fresh process as far as deprecation warnings go (each key warns once per process)."""
    monkeypatch.setattr(config_module, "_warned", set())


@pytest.mark.parametrize(("section", "key"), SCHEDULE_KEYS)
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("6h", "every 6h"),
        ("every 1h30m", "every 1h30m"),
        ("0 3 * * *", "0 3 * * *"),
        ({"every": "12h"}, "every 12h"),
        ({"cron": "0 3 * * 1-5", "timezone": "Europe/Paris"}, "0 3 * * 1-5 (Europe/Paris)"),
        (3600, "every 1h"),  # deprecated, warned
    ],
)
def test_every_schedule_key_accepts_every_form(tmp_path, warned, section, key, value, expected):
    config = parse_config(with_value(tmp_path, section, key, value))
    holder = getattr(config, section)
    schedule = holder[key] if isinstance(holder, dict) else getattr(holder, key)
    assert str(schedule) == expected


@pytest.mark.parametrize(("section", "key"), SCHEDULE_KEYS)
@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("daily", "'daily' is neither an interval (6h, 90s, 1h30m, every 6h) nor a 5-field cron"),
        ("61 3 * * *", "'61 3 * * *' is not a valid cron line"),
        ("3600", "'3600' is neither an interval"),
        (0, "0 is not a number of seconds above zero"),
        ({"every": "6h", "cron": "0 3 * * *"}, "give exactly one of every"),
        ({"cron": "0 3 * * *", "timezone": "Mars/Base"}, "timezone 'Mars/Base' is not a time"),
        ({"cron": "0 3 * * *", "tz": "UTC"}, "unknown key 'tz'"),
    ],
)
def test_schedule_problems_name_the_key(tmp_path, section, key, value, problem):
    (reported,) = problems_of(with_value(tmp_path, section, key, value))
    assert reported.startswith(f"{section}.{key}: {problem}"), reported


def test_the_issue_examples_all_work(tmp_path, warned):
    raw = valid(tmp_path)
    raw["reconcile"] = {"schedule": "6h"}  # was refused: reconcile took cron or seconds only
    raw["snapshots"] = {"schedule": 3600}  # was refused: snapshots took text only
    raw["schedules"] = {"metrics": 60}
    with capture_logs() as logs:
        config = parse_config(raw)
    assert config.reconcile.schedule.every == timedelta(hours=6)
    assert config.snapshots.schedule.every == timedelta(hours=1)
    assert config.schedules["metrics"].every == timedelta(seconds=60)
    deprecated = [e for e in logs if e["event"] == "config.deprecated"]
    assert [(e["key"], e["value"], e["use"], e["log_level"]) for e in deprecated] == [
        ("schedules.metrics", 60, "1m", "warning"),
        ("snapshots.schedule", 3600, "1h", "warning"),
    ]


def test_a_deprecated_key_warns_once_per_process_not_at_every_reload(tmp_path, warned):
    raw = with_value(tmp_path, "gc", "schedule", 3600)
    with capture_logs() as logs:
        parse_config(raw)
        parse_config(raw)
        parse_config(with_value(tmp_path, "gc", "schedule", "1h"))
    assert [e["key"] for e in logs if e["event"] == "config.deprecated"] == ["gc.schedule"]


def test_written_units_and_mappings_are_not_deprecated(tmp_path, warned):
    raw = with_value(tmp_path, "schedules", "metrics", {"every": 60})
    raw["scrub"] = {"schedule": "1h"}
    with capture_logs() as logs:
        parse_config(raw)
    assert [e for e in logs if e["event"] == "config.deprecated"] == []


def test_snapshots_keep_their_five_minute_minimum_and_the_others_have_none(tmp_path, warned):
    assert problems_of(with_value(tmp_path, "snapshots", "schedule", "every 4m")) == [
        "snapshots.schedule: interval '4m' is shorter than 5m, the least this key allows"
    ]
    assert parse_config(with_value(tmp_path, "snapshots", "schedule", "5m"))
    assert parse_config(with_value(tmp_path, "snapshots", "schedule", "* * * * *"))  # as before
    config = parse_config(with_value(tmp_path, "schedules", "metrics", "0.5s"))
    assert config.schedules["metrics"].every == timedelta(seconds=0.5)
    assert parse_config(with_value(tmp_path, "reconcile", "schedule", "1s"))


@pytest.mark.parametrize("job", ["snapshots", "reconcile", "retention", "gc", "scrub", "inventory"])
def test_a_job_with_its_own_section_is_scheduled_there_only(tmp_path, job):
    (reported,) = problems_of(with_value(tmp_path, "schedules", job, "6h"))
    assert reported.startswith(f"schedules.{job}: the {job} job runs on {job}.schedule")
    assert reported.endswith("set it there instead")


def test_the_snapshots_refusal_says_the_alarm_reads_snapshots_schedule(tmp_path):
    (reported,) = problems_of(with_value(tmp_path, "schedules", "snapshots", None))
    assert "(so does the snapshot-age alarm)" in reported


@pytest.mark.parametrize(
    ("section", "key", "value", "expected"),
    [
        ("restore", "share_expiry", "36h", timedelta(hours=36)),
        ("restore", "share_expiry", 3600, timedelta(hours=1)),
        ("queue", "visibility_timeout", "5m", timedelta(minutes=5)),
        ("queue", "visibility_timeout", 120, timedelta(minutes=2)),
        ("consumer", "drain_timeout", "1m30s", timedelta(seconds=90)),
        ("consumer", "drain_timeout", 0, timedelta(0)),
        ("metrics", "imds_timeout", "2s", timedelta(seconds=2)),
        ("metrics", "imds_timeout", 0.5, timedelta(seconds=0.5)),
        ("gc", "grace_period", "2d", timedelta(days=2)),
        ("retention", "keep_younger_than", "2w", timedelta(weeks=2)),
    ],
)
def test_durations_take_units_or_seconds(tmp_path, section, key, value, expected):
    raw = valid(tmp_path)
    raw.setdefault(section, {})[key] = value
    assert getattr(getattr(parse_config(raw), section), key) == expected


@pytest.mark.parametrize(
    ("section", "key", "value", "problem"),
    [
        ("restore", "share_expiry", "8d", "'8d' is longer than 7d (the longest presigned URL)"),
        ("restore", "share_expiry", "0s", "'0s' must be longer than zero"),
        ("restore", "share_expiry", "1.5s", "'1.5s' is not a whole number of seconds"),
        ("restore", "share_expiry", "soon", "'soon' is not a duration (like 90s, 15m, 12h"),
        ("queue", "visibility_timeout", "5s", "'5s' is shorter than 10s"),
        ("queue", "visibility_timeout", "13h", "'13h' is longer than 12h"),
        ("consumer", "drain_timeout", -1, "-1 is not a duration"),
        ("metrics", "imds_timeout", "11s", "'11s' is longer than 10s"),
        ("metrics", "imds_timeout", 0, "'0s' must be longer than zero"),
    ],
)
def test_duration_problems_name_the_key(tmp_path, section, key, value, problem):
    raw = valid(tmp_path)
    raw.setdefault(section, {})[key] = value
    (reported,) = problems_of(raw)
    assert reported.startswith(f"{section}.{key}: {problem}"), reported


def test_a_dumped_config_reads_back_equal(tmp_path, warned):
    raw = valid(tmp_path)
    raw["snapshots"] = {"schedule": "every 90m"}
    raw["scrub"] = {"schedule": {"cron": "0 5 * * *", "timezone": "Europe/Paris"}}
    raw["schedules"] = {"metrics": 30, "disk": None}
    raw["restore"] = {"share_expiry": "36h"}
    config = parse_config(raw)
    dumped = yaml.safe_dump(config.model_dump(mode="json"))
    assert "share_expiry: 1d12h" in dumped and "schedule: 1h30m" in dumped
    assert parse_config(yaml.safe_load(dumped)) == config


# -- retention under pressure (issue 17) -----------------------------------------------------


def test_retention_when_full_is_off_by_default_and_never_goes_below_one_version(tmp_path):
    assert parse_config(valid(tmp_path)).retention.when_full is None
    raw = valid(tmp_path) | {"retention": {"when_full": {"keep_younger_than": "1d"}}}
    when_full = parse_config(raw).retention.when_full
    assert when_full is not None
    assert when_full.keep_last_versions == 1 and when_full.keep_younger_than == timedelta(days=1)
    assert when_full.gc_grace_period == timedelta(hours=1)
    assert when_full.check_every == timedelta(minutes=5)
    zero = valid(tmp_path) | {"retention": {"when_full": {"keep_last_versions": 0}}}
    assert any("retention.when_full.keep_last_versions" in p for p in problems_of(zero))


def test_auto_grow_is_off_by_default_and_keeps_to_ebs_rules(tmp_path):
    grow = parse_config(valid(tmp_path)).storage.auto_grow
    assert not grow.enabled and grow.command is None
    assert (grow.used_percent, grow.step_percent, grow.min_step_gib) == (85.0, 20.0, 10)
    assert grow.cooldown == timedelta(hours=6)

    def storage(**auto_grow: object) -> dict:
        raw = valid(tmp_path)
        raw["storage"]["auto_grow"] = auto_grow
        return raw

    assert any("storage.auto_grow.cooldown" in p for p in problems_of(storage(cooldown="1h")))
    assert any("storage.auto_grow.command" in p for p in problems_of(storage(command=[])))
    assert any(
        "storage.auto_grow.used_percent" in p for p in problems_of(storage(used_percent=100))
    )


# -- logging.level in any case; aws.region spelled as AWS spells it -------------------------


@pytest.mark.parametrize(("written", "level"), [("info", "INFO"), ("Warning", "WARNING")])
def test_log_levels_are_accepted_in_any_case(tmp_path, written, level):
    config = parse_config({**valid(tmp_path), "logging": {"level": written}})
    assert config.logging.level == level


def test_an_unknown_log_level_names_its_key(tmp_path):
    problems = problems_of({**valid(tmp_path), "logging": {"level": "loud"}})
    assert problems == ["logging.level: input should be 'DEBUG', 'INFO', 'WARNING' or 'ERROR'"]


@pytest.mark.parametrize("region", ["eu-west-1", "us-gov-west-1", "ap-southeast-2", "il-central-1"])
def test_region_names_as_aws_spells_them_load(tmp_path, region):
    assert parse_config({**valid(tmp_path), "aws": {"region": region}}).aws.region == region


@pytest.mark.parametrize("region", ["EU-WEST-1", "eu-west", "euwest-1", "eu-west-1a", "frankfurt"])
def test_a_region_that_is_no_region_name_is_refused_at_load_naming_its_key(tmp_path, region):
    problems = problems_of({**valid(tmp_path), "aws": {"region": region}})
    assert problems == [f"aws.region: {region!r} is not a region name like eu-west-1"]
