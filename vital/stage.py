"""Entry-point wrapper for stage scripts: load params, run, turn input errors into one clear line."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from vital.failures import StageFailed
from vital.io import RecordError
from vital.params import Params, ParamsError, load_params
from vital.paths import Paths


def _api_errors() -> tuple[type[Exception], ...]:
    """openai's errors (a refusal, a lost connection), without importing openai into every stage."""
    openai = sys.modules.get("openai")
    return (openai.APIError,) if openai is not None else ()


def _one_line(e: Exception) -> str:
    text = " ".join(str(e).split())
    if type(e).__module__.startswith("openai"):  # an API error's text may quote the key
        from vital.llm.client import redact

        text = f"{e.__class__.__name__}: {redact(text)}"
    return text


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
    except (ParamsError, RecordError, StageFailed, OSError, *errors, *_api_errors()) as e:
        print(f"[{name}] error: {_one_line(e)}", file=sys.stderr)
        sys.exit(2)
    print(f"[{name}] done in {time.perf_counter() - start:.1f}s", file=sys.stderr)
