"""evaluate_finetuned: LLaVA-Med's VQA protocol, scored.

Every model the finetune stages fine-tuned on a set's train split (`models/finetuned/<model>/<set>`) answers
that set's test split (`evaluate.sets` entry of the same name); writes
`artifacts/predictions_finetuned/<model>/<set>.jsonl` and `metrics/evaluate_finetuned.json` (per set: each
model, seed summaries, `top_minus_random`, `top_minus_base`, `random_minus_base`).
"""

from vital.evaluate import run_finetuned
from vital.stage import run_stage


def main() -> None:
    run_stage("evaluate_finetuned", run_finetuned)


if __name__ == "__main__":
    main()
