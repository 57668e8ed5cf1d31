"""LLaVA-Med's VQA protocol: fine-tune a model on a VQA set's train split before scoring its test split.

LLaVA-Med reports VQA-RAD, SLAKE and PathVQA after fine-tuning on each set's training questions (one
single-turn conversation per question, the reference answer as the reply), and BioMed-VITAL compares
its instruction-tuned models the same way. The `finetune` stage does that for every model the pipeline
evaluates (the base and each tuned model), one checkpoint per set under ``models/finetuned/<model>/<set>``;
the `evaluate` stage scores each on the test split of the evaluate set with the same name.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vital.io import write_json
from vital.llava import tune
from vital.params import FinetuneParams
from vital.vqa.items import LoadedSet, VQAItem


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
) -> dict[str, Any]:
    """Fine-tune ``model`` once per train split; checkpoints go to ``out_root/<set name>``.

    Returns ``{set name: tune metrics}`` (also written to ``metrics_path``); each loss curve goes to
    ``curves_dir/<set name>.csv``. A killed run resumes from the checkpoint under ``work_dir``.
    """
    out_root, work_dir = Path(out_root), Path(work_dir)
    out_root.mkdir(parents=True, exist_ok=True)  # the stage's output, even with no sets to fine-tune on
    results: dict[str, Any] = {}
    for s in train_sets:
        if not s.items:
            raise ValueError(f"finetune set {s.name!r} ({s.path}): no usable questions")
        data = work_dir / s.name / "train.json"
        write_json(data, vqa_records(s.items))
        metrics = tune.run(
            base=model,
            data=data,
            image_root=Path("/"),  # the records' image paths are absolute
            out=out_root / s.name,
            tp=fp,
            checkpoint_dir=work_dir / s.name / "checkpoint",
            curve_path=None if curves_dir is None else Path(curves_dir) / f"{s.name}.csv",
        )
        results[s.name] = {**metrics, "train_file": str(s.path), "train": s.report()}
    if metrics_path is not None:
        write_json(metrics_path, results)
    return results
