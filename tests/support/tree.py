"""What a directory holds, as the restore tests compare it."""

from __future__ import annotations

import os
from pathlib import Path


def files_under(directory: Path) -> list[str]:
    """Every file under `directory` (temp files included), relative to it, sorted."""
    return sorted(
        os.path.relpath(os.path.join(d, name), directory)
        for d, _dirs, files in os.walk(directory)
        for name in files
    )
