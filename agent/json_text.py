"""JSON text that any UTF-8 output takes.

`json.dumps(..., ensure_ascii=False)` keeps a key's characters readable, but a lone
surrogate (a key only a damaged journal line can carry: S3 keys are UTF-8) then makes the
text unencodable, and the write or `.encode()` that follows raises. Such a text is written
with its non-ASCII characters escaped instead (`\\ud800`): still the same JSON value.
"""

from __future__ import annotations

import json
from typing import Any


def dumps(data: Any, **options: Any) -> str:
    """`json.dumps(data, ensure_ascii=False, **options)`, or escaped where that text could
    not be encoded as UTF-8."""
    text = json.dumps(data, ensure_ascii=False, **options)
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(data, ensure_ascii=True, **options)
    return text
