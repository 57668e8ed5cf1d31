"""LLaVA-Med's VQA protocol: fine-tune a model on a VQA set's train split before scoring its test split.

LLaVA-Med reports VQA-RAD, SLAKE and PathVQA after fine-tuning on each set's training questions (here one
single-turn conversation per question, the reference answer as the reply). The `finetune` stages do that
for the base and every tuned model, one checkpoint per set under ``models/finetuned/<model>/<set>``; the
`evaluate_finetuned` stage scores each on the test split of the evaluate set with the same name.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from vital import lineage
from vital.hub import pinned
from vital.io import RecordError, write_json
from vital.params import FinetuneParams, MlflowParams, Params
from vital.paths import Paths
from vital.vqa.items import LoadedSet, VQAItem
from vital.vqa.loaders import read_sets, set_files


def vqa_records(items: Sequence[VQAItem]) -> list[dict[str, Any]]:
    """One LLaVA conversation per question: ``<image>\\n{question}`` answered with the reference answer.

    Image paths are absolute, so the records train from wherever the set's images live.
    """
    return [
        {
            "id": item.question_id,
            "image": str(Path(item.image_path).resolve()),
            "conversations": [
                {"from": "human", "value": f"<image>\n{item.question}"},
                {"from": "gpt", "value": item.answer},
            ],
        }
        for item in items
    ]


def run(
    model: str | Path,
    train_sets: Sequence[LoadedSet],
    fp: FinetuneParams,
    out_root: Path,
    work_dir: Path,
    metrics_path: Path | None = None,
    curves_dir: Path | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> dict[str, Any]:
    """Fine-tune ``model`` once per train split; checkpoints go to ``out_root/<set name>``.

    Returns ``{set name: tune metrics}`` (also written to ``metrics_path``); each loss curve goes to
    ``curves_dir/<set name>.csv``. A killed run resumes from its checkpoint under ``work_dir``.
    """
    from vital.llava import tune  # torch and peft, loaded only when training

    out_root, work_dir = Path(out_root), Path(work_dir)
    # the stage's declared outputs exist even with no set to fine-tune on (finetune.sets: [])
    out_root.mkdir(parents=True, exist_ok=True)
    if curves_dir is not None:
        Path(curves_dir).mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    for s in train_sets:
        data = work_dir / s.name / f"{s.name}.json"  # the progress bar reads "tune <set>"
        write_json(data, vqa_records(s.items))
        try:
            metrics = tune.run(
                base=model,
                data=data,
                image_root=Path("/"),  # the records' image paths are absolute
                out=out_root / s.name,
                tp=fp,
                checkpoint_dir=work_dir / s.name / "checkpoint",
                curve_path=None if curves_dir is None else Path(curves_dir) / f"{s.name}.csv",
                on_step=on_step,
                section="finetune",
            )
        except ValueError as e:  # e.g. every question dropped by finetune.max_length
            raise RecordError(f"finetune set {s.name!r} ({s.path}): {e}") from e
        results[s.name] = {**metrics, "train_file": str(s.path), "train": s.report()}
        shutil.rmtree(work_dir / s.name, ignore_errors=True)
    if metrics_path is not None:
        write_json(metrics_path, results)
    return results


def log_lineage(
    results: dict[str, Any],
    train_sets: Sequence[LoadedSet],
    model: str | Path,
    out_root: Path,
    fp: FinetuneParams,
    mp: MlflowParams,
    root: Path,
) -> dict[str, dict[str, Any]]:
    """One MLflow run per set, its model registered as ``<mp.registered_model>-<set>`` with the digests of
    the model it started from, the train split and its images; returns ``{set: log_tune record}``."""
    records, name = {}, Path(out_root).name
    for s in train_sets:
        records[s.name] = lineage.log_tune(
            fp.model_dump(),
            results[s.name],
            {"base": model, "train_split": s.path, "train_images": s.images},
            Path(out_root) / s.name,
            mp.model_copy(update={"registered_model": f"{mp.registered_model}-{s.name}"}),
            root,
            run_name=f"finetune {name} on {s.name}",
            tags={"vital.finetuned_from": name, "vital.finetune_set": s.name},
        )
    return records


def run_stage(p: Params, paths: Paths, model: str, name: str, seed: int | None = None) -> dict[str, Any]:
    """``models/finetuned/<name>/<set>`` for every ``finetune.sets`` train split; one MLflow run per set."""
    from vital.llava import tune  # torch and peft, loaded only when training

    fp = p.finetune if seed is None else p.finetune.model_copy(update={"seed": seed})
    train_sets = read_sets(fp.sets, paths.root, p.evaluate.max_invalid_fraction)
    out_root = paths.finetuned / name
    # the untuned base (finetune_base) is tune.base at tune.base_revision; a tuned model is a local dir
    revision = p.tune.base_revision if model == p.tune.base else None
    source, _ = pinned("tune.base" if model == p.tune.base else "--model", model, revision, paths.root)
    results = run(
        model=source,
        train_sets=train_sets,
        fp=fp,
        out_root=out_root,
        work_dir=paths.root / ".vital" / "checkpoints" / "finetune" / name,
        curves_dir=paths.plots / "finetune" / name,
    )
    if p.mlflow.enabled and tune.is_main_process():
        log_lineage(results, train_sets, model, out_root, fp, p.mlflow, paths.root)
    return results


def train_files(p: Params, root: Path) -> list[str]:
    """Question files and image folders of ``finetune.sets``."""
    return [f for s in p.finetune.sets for f in set_files(s, root)]
