"""Reliability fixtures: moto_server for the real agent (tests build their stack with the
e2e `make_stack`, each with its own config sections), and in-process pipelines.

Every test here is marked `reliability`; the end-to-end ones also `e2e`. `make test` runs
them all except the `soak` variants (`make soak`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.storage.volume import Volume
from tests.e2e.conftest import Stack
from tests.reliability.pipeline import Pipeline, local_pipeline, pipeline_config
from tests.support.local_aws import MotoServer


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.reliability)


@pytest.fixture
def moto_server(tmp_path: Path) -> Iterator[MotoServer]:
    with MotoServer(log_path=tmp_path / "moto.log") as server:
        yield server


@pytest.fixture
def make_pipeline(tmp_path: Path) -> Iterator[Callable[..., Pipeline]]:
    """`make_pipeline(queue={...})`: an in-process pipeline (moto + consumer + service)."""
    with contextlib.ExitStack() as stack:

        def build(**sections: dict[str, Any]) -> Pipeline:
            root = tmp_path / "backups"
            root.mkdir(exist_ok=True)
            volume = Volume(root)
            volume.initialise("vol-reliability")
            volume.open()
            return stack.enter_context(local_pipeline(pipeline_config(root, **sections), volume))

        yield build


@pytest.fixture
def pipeline(make_pipeline: Callable[..., Pipeline]) -> Pipeline:
    return make_pipeline()


def point_agent_at(stack: Stack, endpoint: str) -> None:
    """Rewrite the agent's config file so its AWS calls go through `endpoint` (a proxy)."""
    raw = yaml.safe_load(stack.config_path.read_text(encoding="utf-8"))
    raw["aws"]["endpoint_url"] = endpoint
    stack.config_path.write_text(yaml.safe_dump(raw), encoding="utf-8")
