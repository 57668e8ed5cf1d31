"""Image files checked before use: a missing, empty or corrupt image is reported with its path.

Loaders call :func:`check_image` when they read records, so a bad file is skipped and listed instead
of stopping inference or training later with a traceback that does not name it.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from PIL import Image

from vital.shards import image_exists, open_image, split_ref


@lru_cache(maxsize=65536)
def _image_problem(path: str, size: int, mtime_ns: int) -> str | None:
    """Why an image file cannot be used (None if it can); cached per file version."""
    if size == 0:
        return "image file is empty (0 bytes)"
    try:
        with Image.open(path) as im:
            im.verify()
    except Exception as e:  # PIL raises many types for a truncated or foreign file
        return f"image file is not a readable image ({type(e).__name__}: {e})"
    return None


def check_image(path: str | Path) -> str | None:
    """None when ``path`` is a readable image, else the reason (missing, empty, corrupt) and the path."""
    if split_ref(path)[1] is not None:  # a figure inside a fetched shard (`<shard>.tar#<member>`)
        return _shard_image_problem(path)
    path = Path(path)
    try:
        st = path.stat()
    except OSError:
        return f"image not found: {path}"
    if not path.is_file():
        return f"image not found: {path}"
    problem = _image_problem(str(path), st.st_size, st.st_mtime_ns)
    return None if problem is None else f"{problem}: {path}"


def _shard_image_problem(ref: str | Path) -> str | None:
    ref = os.path.normpath(ref)  # `data/corpus/../../artifacts/figures/...`: the corpus folder need not exist
    if not image_exists(ref):
        return f"image not found: {ref}"
    try:
        with open_image(ref) as im:
            im.verify()
    except Exception as e:  # noqa: BLE001 - PIL raises many types for a truncated or foreign file
        return f"image file is not a readable image ({type(e).__name__}: {e}): {ref}"
    return None
