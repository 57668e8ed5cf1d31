"""Entry-point wrapper for stage scripts: load params, run, turn input errors into one clear line."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from vital.io import RecordError
from vital.params import Params, ParamsError, load_params
from vital.paths import Paths


def run_stage(
    name: str,
    fn: Callable[[Params, Paths], object],
    params_file: str = "params.yaml",
    errors: tuple[type[Exception], ...] = (),
) -> None:
    """Validate all params before any work (a typo anywhere fails every stage, before anything is paid for)."""
    start = time.perf_counter()
    try:
        params = load_params(params_file)
        fn(params, Paths())
    except (ParamsError, RecordError, FileNotFoundError, *errors) as e:
        print(f"[{name}] error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"[{name}] done in {time.perf_counter() - start:.1f}s", file=sys.stderr)
