"""Progress bars for long work: shown on a terminal, silent in CI logs unless asked for."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable

from tqdm.auto import tqdm


def progress(iterable: Iterable | None = None, desc: str = "", total: int | None = None, **kw) -> tqdm:
    disable = os.environ.get("VITAL_PROGRESS", "auto") == "off" or (
        os.environ.get("VITAL_PROGRESS", "auto") == "auto" and not sys.stderr.isatty()
    )
    return tqdm(iterable, desc=desc, total=total, disable=disable, dynamic_ncols=True, **kw)
