"""The process-restore tests in an interpreter of their own (see ALONE in tests/conftest.py).

agent/restore/workers.py forks only while the process has one thread, and earlier tests of a
session leave threads behind (servers, pools), so in the whole suite a process restore falls
back to threads and the tests of the processes fail (the CI run of 2026-12-01 13:01).
Here they run in a fresh `python -m pytest`, single-threaded as a `backup-restore` command
is.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ALONE

TESTS = Path(__file__).with_name("test_restore_processes.py")


def test_the_process_restore_tests_pass_in_a_single_threaded_interpreter() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
         str(TESTS)],
        env={**os.environ, ALONE: "1"},
        cwd=TESTS.parents[2],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert " passed" in result.stdout and "skipped" not in result.stdout.splitlines()[-1]
