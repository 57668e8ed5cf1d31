"""The tune stage as `dvc repro` runs it, in a child process, for tests/test_tune_distributed.py.

python tests/tune_dist_child.py ROOT SUBSET SEED SLEEP_S     (cwd ROOT; the repository root on PYTHONPATH;
directly or under `accelerate launch`)

Runs the tune stage's entry through ``vital.stage.call`` (which writes its evidence) with ROOT/params.yaml. Every write of a metrics file, a loss curve or an
MLflow run is appended to ROOT/writes-rank<RANK>.txt before it happens, so the test can tell which rank
wrote what. From its first checkpoint on it sleeps SLEEP_S after every optimizer step, which gives the
parent time to kill it before the end.
"""

import functools
import os
import sys
import time
from pathlib import Path

from vital import stats
from vital import tune as tune_stage
from vital.llava import tune
from vital.params import load_params
from vital.paths import Paths
from vital.pipeline import STAGES
from vital.stage import call


def main() -> None:
    root, subset, seed, sleep_s = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    log = root / f"writes-rank{os.environ.get('RANK', '0')}.txt"

    def recorded(what, fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            with log.open("a") as f:
                f.write(f"{what}\n")
            return fn(*args, **kwargs)

        return wrapper

    tune.write_json = recorded("metrics", tune.write_json)
    stats.write_json = recorded("metrics", stats.write_json)
    tune.write_curve = recorded("curve", tune.write_curve)
    tune_stage.lineage.log_tune = recorded("mlflow", tune_stage.lineage.log_tune)
    p = load_params(root / "params.yaml")

    def slow(step: int, loss: float) -> None:
        if step >= p.tune.checkpoint_every:
            time.sleep(sleep_s)

    tune.run = functools.partial(tune.run, on_step=slow)  # tune_stage imports it when it runs
    call(STAGES["tune"], p, Paths(root), subset=subset, seed=seed)


if __name__ == "__main__":
    main()
