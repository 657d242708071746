"""tests/support/patching.released: the library as released inside, the patches as before after."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support import moto_dynamodb_fast, moto_server, patching


class Patch:
    def __init__(self, on: bool) -> None:
        self.on = on
        self.calls: list[str] = []

    def installed(self) -> bool:
        return self.on

    def install(self) -> None:
        self.calls.append("install")
        self.on = True

    def uninstall(self) -> None:
        self.calls.append("uninstall")
        self.on = False


@pytest.mark.parametrize("was", [True, False])
def test_inside_released_after_as_before_even_after_a_failure(was: bool) -> None:
    patch = Patch(on=was)
    with (
        pytest.raises(KeyError),
        patching.released(patch.installed, patch.install, patch.uninstall),
    ):
        assert not patch.on
        raise KeyError("inside")
    assert patch.on is was
    assert patch.calls == (["uninstall", "install"] if was else ["uninstall"])


@pytest.mark.parametrize("module", [moto_server, moto_dynamodb_fast])
def test_both_moto_patches_are_released_and_restored_through_it(module: Any) -> None:
    was = module.installed()
    module.install()
    try:
        with module.as_released():
            assert not module.installed()
        assert module.installed()
    finally:
        if not was:
            module.uninstall()
