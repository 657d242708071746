"""The dashboard's low-space widgets (issue 17): Paused and DaysUntilFull per instance, on
CloudWatch's 24-unit grid, no widget overlapping another."""

from __future__ import annotations

from itertools import combinations

from agent.operations.dashboard import dashboard_body
from tests.support.aws import make_config

FLEET = [
    {"InstanceId": "i-0b", "Volume": "/mnt/backups"},
    {"InstanceId": "i-0a", "Volume": "/mnt/backups"},
]


def by_title(body: dict) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {}
    for widget in body["widgets"]:
        if widget["type"] == "metric":
            found.setdefault(widget["properties"]["title"], []).append(widget)
    return found


def test_each_instance_has_a_paused_and_a_days_until_full_widget(tmp_path):
    config = make_config(tmp_path, alerts={"days_until_full": 5})
    widgets = by_title(dashboard_body(config, FLEET))

    paused = widgets["Paused (1) for no volume or no room"]
    days = widgets["Days until full (forecast)"]
    assert len(paused) == len(days) == 2  # one per instance
    for widget, instance in zip(paused, ["i-0a", "i-0b"], strict=True):
        (metric,) = widget["properties"]["metrics"]
        assert metric[:4] == ["BackupAgent", "Paused", "InstanceId", instance]
        assert metric[-1] == {"stat": "Maximum"}  # any pause in the period shows
    for widget, instance in zip(days, ["i-0a", "i-0b"], strict=True):
        (metric,) = widget["properties"]["metrics"]
        assert metric[:4] == ["BackupAgent", "DaysUntilFull", "InstanceId", instance]
        assert metric[-1] == {"stat": "Minimum"}  # the most urgent forecast
        alert_line = widget["properties"]["annotations"]["horizontal"]
        assert alert_line == [{"label": "alert", "value": 5}]


def test_the_widgets_stay_on_the_grid_and_never_overlap(tmp_path):
    body = dashboard_body(make_config(tmp_path), FLEET)
    boxes = [(w["x"], w["y"], w["width"], w["height"]) for w in body["widgets"]]
    assert all(x >= 0 and x + width <= 24 for x, _, width, _ in boxes)
    for (x1, y1, w1, h1), (x2, y2, w2, h2) in combinations(boxes, 2):
        assert x1 + w1 <= x2 or x2 + w2 <= x1 or y1 + h1 <= y2 or y2 + h2 <= y1
