"""finetune: LLaVA-Med's VQA protocol, one model fine-tuned on every `finetune.sets` train split.

python stages/finetune.py --model models/tuned/top-s0 --name top-s0 --seed 0
python stages/finetune.py --model models/base --name base-s0 --seed 0

Writes models/finetuned/<name>/<set>/, metrics/finetune/<name>.json and the loss curves
metrics/plots/finetune/<name>/<set>.csv; logs one MLflow run per set and registers the model as
<mlflow.registered_model>-<set>.
"""

import argparse

from vital import finetune
from vital.llava import tune
from vital.params import Params
from vital.paths import Paths
from vital.stage import run_stage
from vital.vqa.loaders import read_sets


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="checkpoint to fine-tune (local dir or hub id)")
    ap.add_argument("--name", required=True, help="output name: models/finetuned/<name>/<set>")
    ap.add_argument("--seed", type=int, help="overrides finetune.seed")
    return ap.parse_args()


def _run(p: Params, paths: Paths, a: argparse.Namespace) -> None:
    fp = p.finetune if a.seed is None else p.finetune.model_copy(update={"seed": a.seed})
    train_sets = read_sets(fp.sets, paths.root, p.evaluate.max_invalid_fraction)
    out_root = paths.finetuned / a.name
    results = finetune.run(
        model=a.model,
        train_sets=train_sets,
        fp=fp,
        out_root=out_root,
        work_dir=paths.root / ".vital" / "checkpoints" / "finetune" / a.name,
        metrics_path=paths.metrics / "finetune" / f"{a.name}.json",
        curves_dir=paths.plots / "finetune" / a.name,
    )
    if p.mlflow.enabled and tune.is_main_process():
        finetune.log_lineage(results, train_sets, a.model, out_root, fp, p.mlflow, paths.root)


def main() -> None:
    a = _args()
    run_stage("finetune", lambda p, paths: _run(p, paths, a))


if __name__ == "__main__":
    main()
