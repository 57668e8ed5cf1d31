"""evaluate: answer every evaluation set with the tuned and base models, score with LLaVA-Med's metrics.

Reads params `evaluate`, `models/tuned`, `models/base`, `data/vqa`; writes
`artifacts/predictions/<model>/<set>.jsonl` and `metrics/evaluate.json` (zero-shot; the models fine-tuned
on each set's train split are scored by `evaluate_finetuned`).
"""

from vital.evaluate import run
from vital.stage import run_stage


def main() -> None:
    run_stage("evaluate", run)


if __name__ == "__main__":
    main()
