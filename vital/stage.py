"""Run one pipeline stage: parse its options, load and validate params, check its DVC deps, call its entry.

``stages/<script>.py`` and ``vital run <stage>`` both come here; the stage table is ``vital.pipeline``.
Input and configuration errors end the stage with one line naming the file, record or parameter.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

from vital import stats
from vital.dag import DagError, check_stage
from vital.determinism import pin_threads
from vital.failures import StageFailed
from vital.io import RecordError
from vital.params import Params, ParamsError, load_params
from vital.paths import Paths
from vital.pipeline import STAGES, Stage

ERRORS: tuple[type[Exception], ...] = (ParamsError, RecordError, DagError, StageFailed, OSError)


def _api_errors() -> tuple[type[Exception], ...]:
    """openai's errors (a refusal, a lost connection), without importing openai into every stage."""
    openai = sys.modules.get("openai")
    return (openai.APIError,) if openai is not None else ()


def _one_line(e: Exception) -> str:
    text = " ".join(str(e).split())
    client = sys.modules.get("vital.llm.client")  # loaded by the stages that talk to an API
    if type(e).__module__.startswith("openai") and client is not None:  # its text may quote the key
        text = f"{e.__class__.__name__}: {client.redact(text)}"
    return text


def parser(stage: Stage) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=stage.script_path, description=f"{stage.name}: {stage.doc}")
    for opt in stage.options:
        ap.add_argument(f"--{opt.name}", type=opt.type, required=opt.required, help=opt.help)
    ap.add_argument("--params", default="params.yaml", help="parameters file (default: params.yaml)")
    return ap


def call(stage: Stage, params: Params, paths: Paths, **options) -> object:
    """Run the stage's entry, timed with the one clock, and write what it returned in the one layout: its
    evidence file and, for a stage with a headline, its DVC metrics file (vital/stats.py)."""
    module, _, attr = stage.entry.partition(":")
    start = stats.clock()
    try:
        record = getattr(importlib.import_module(module), attr)(params, paths, **options)
    except Exception as e:  # a stage that failed after counting its input keeps its evidence
        if isinstance(getattr(e, "record", None), dict):
            _write(stage, paths, options, e.record, start, headline=False)
        raise
    record = record if isinstance(record, dict) else {}
    _write(stage, paths, options, record, start)
    return record


def _write(
    stage: Stage, paths: Paths, options: dict, record: dict, start: float, headline: bool = True
) -> None:
    """The evidence; the headline only for a run that succeeded (a failed run's partial record is no result)."""
    run = stats.StageStats.from_record(
        (stage.script or stage.name) if stage.item else stage.name,
        record,
        item=stage.item_name(options, record),
        wall_s=stats.seconds(start),
    )
    stats.write(paths.root, run, stage.headline if headline else "")


def run_stage(
    name: str, fn: Callable[..., object], params_file: str = "params.yaml", options: dict | None = None
) -> None:
    """Validate all params before any work (a typo anywhere fails every stage, before anything is paid for),
    check the stage's DVC deps, run ``fn(params, paths, **options)``; errors end it with one line, exit 2."""
    start = stats.clock()
    try:
        pin_threads()
        params = load_params(params_file)
        paths = Paths()
        check_stage(name, params, paths.root)
        fn(params, paths, **(options or {}))
    except (*ERRORS, *_api_errors()) as e:
        print(f"[{name}] error: {_one_line(e)}", file=sys.stderr)
        sys.exit(2)
    print(f"[{name}] done in {stats.seconds(start):.1f}s", file=sys.stderr)


def main(name: str, argv: Sequence[str] | None = None) -> None:
    """``stages/<script>.py`` and ``vital run``: the table's entry with the stage's command-line options."""
    stage = STAGES[name]
    options = vars(parser(stage).parse_args(argv))
    params_file = options.pop("params")
    run_stage(name, lambda params, paths, **o: call(stage, params, paths, **o), params_file, options)
