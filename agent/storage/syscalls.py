"""syncfs(2) from the C library: Python 3.11's `os` has no syncfs.

Looked up once, in the running process's own C library (`CDLL(None)`: no search for a
library file, no `ctypes.util`). None where there is none (not Linux, or a C library
without it): callers then flush another way.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Callable


def _load_syncfs() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int]
    function.restype = ctypes.c_int
    return function


SYNCFS = _load_syncfs()


def syncfs(fd: int, function: Callable[[int], int] | None) -> None:
    """Everything written to the filesystem holding `fd` is on disk, through `function`
    (`SYNCFS`, or a test's stand-in); OSError with its errno if not (since Linux 5.8 syncfs
    reports a write error since `fd` was opened, as fsync does). RuntimeError where syncfs
    is missing (None): callers check `SYNCFS` first."""
    if function is None:
        raise RuntimeError("syncfs is not available here")
    if function(fd) != 0:
        number = ctypes.get_errno()
        raise OSError(number, f"syncfs: {os.strerror(number)}")
