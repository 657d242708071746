"""A command-line tool's exit: the interpreter's teardown does not walk the imports' objects.

The measurement is in docs/benchmarks.md (a large restore's last 0.13-0.35 s, under load);
here the mechanism: once the exit handlers registered after the CLI's import have run, every
object left is frozen (`gc.freeze`), so the finalising collections skip them.
"""

from __future__ import annotations

import os
import subprocess
import sys

PROBE = """
import atexit, gc, sys
atexit.register(lambda: print(gc.get_freeze_count(), "frozen at the last exit handler"))
import agent.cli.common
atexit.register(lambda: print(gc.get_freeze_count(), "frozen before the CLI's handler"))
"""


def test_the_objects_left_at_exit_are_frozen_after_the_other_exit_handlers() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE],
        capture_output=True,
        text=True,
        check=True,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)),
        timeout=60,
    )
    first, last = done.stdout.splitlines()
    assert first == "0 frozen before the CLI's handler"
    frozen = int(last.split()[0])
    assert frozen > 10_000 and last.endswith("frozen at the last exit handler")
