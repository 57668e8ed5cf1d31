"""Run one pipeline stage: parse its options, load and validate params, check its DVC deps, call its entry.

``stages/<script>.py`` and ``vital run <stage>`` both come here; the stage table is ``vital.pipeline``.
Input and configuration errors end the stage with one line naming the file, record or parameter.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from collections.abc import Sequence

from vital.dag import DagError, check_stage
from vital.io import RecordError
from vital.params import Params, ParamsError, load_params
from vital.paths import Paths
from vital.pipeline import STAGES, Stage

ERRORS: tuple[type[Exception], ...] = (ParamsError, RecordError, DagError, FileNotFoundError)


def parser(stage: Stage) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=f"stages/{stage.script}.py", description=f"{stage.name}: {stage.doc}")
    for opt in stage.options:
        ap.add_argument(f"--{opt.name}", type=opt.type, required=opt.required, help=opt.help)
    ap.add_argument("--params", default="params.yaml", help="parameters file (default: params.yaml)")
    return ap


def call(stage: Stage, params: Params, paths: Paths, **options) -> object:
    module, _, attr = stage.entry.partition(":")
    return getattr(importlib.import_module(module), attr)(params, paths, **options)


def main(name: str, argv: Sequence[str] | None = None) -> None:
    """Validate all params before any work (a typo anywhere fails every stage, before anything is paid for)."""
    stage = STAGES[name]
    args = vars(parser(stage).parse_args(argv))
    params_file = args.pop("params")
    start = time.perf_counter()
    try:
        params = load_params(params_file)
        paths = Paths()
        check_stage(stage.name, params, paths.root)
        call(stage, params, paths, **args)
    except ERRORS as e:
        print(f"[{name}] error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"[{name}] done in {time.perf_counter() - start:.1f}s", file=sys.stderr)
