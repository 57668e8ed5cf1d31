"""tune: instruction-tune the base LLaVA on a curated set; one MLflow run + registered model per tune.

python stages/tune.py                                   # params: tune.base on top<tune.keep>.json
python stages/tune.py --data artifacts/curated/random40.json --out models/tuned/random40-s1 --seed 1
"""

import argparse
from pathlib import Path

from vital import lineage
from vital.llava import tune
from vital.params import Params
from vital.paths import Paths
from vital.stage import run_stage


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="curated LLaVA JSON (default: artifacts/curated/top<keep%%>.json)")
    ap.add_argument("--out", help="output checkpoint dir (default: models/tuned/top-s<seed>)")
    ap.add_argument("--seed", type=int, help="overrides tune.seed")
    ap.add_argument("--metrics", help="metrics JSON (default: metrics/tune/<out name>.json)")
    ap.add_argument("--plot", help="loss curve CSV (default: metrics/plots/tune/<out name>.csv)")
    return ap.parse_args()


def _run(p: Params, paths: Paths, a: argparse.Namespace) -> None:
    tp = p.tune if a.seed is None else p.tune.model_copy(update={"seed": a.seed})
    data = a.data or paths.curated / f"top{tp.keep}.json"
    out = Path(a.out) if a.out else paths.tuned / f"top-s{tp.seed}"
    metrics = tune.run(
        base=tp.base,
        data=data,
        image_root=paths.corpus,
        out=out,
        tp=tp,
        checkpoint_dir=paths.root / ".vital" / "checkpoints" / "tune" / str(out).replace("/", "_"),
        metrics_path=a.metrics or paths.metrics / "tune" / f"{out.name}.json",
        curve_path=a.plot or paths.plots / "tune" / f"{out.name}.csv",
    )
    if p.mlflow.enabled and tune.is_main_process():
        inputs = {"base": tp.base, "curated": data, "images": paths.corpus / "images"}
        lineage.log_tune(tp.model_dump(), metrics, inputs, out, p.mlflow, paths.root, run_name=str(out))


def main() -> None:
    a = _args()
    run_stage("tune", lambda p, paths: _run(p, paths, a))


if __name__ == "__main__":
    main()
