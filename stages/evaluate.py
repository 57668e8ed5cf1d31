"""evaluate: answer every evaluation set with the tuned and base models, score with LLaVA-Med's metrics.

Reads params `evaluate`, `models/tuned`, `models/base`, `data/vqa`, and `models/finetuned` (LLaVA-Med's
VQA protocol: each model fine-tuned on the set's train split, scored on its test split); writes
`artifacts/predictions/<model>/<set>.jsonl`, `artifacts/predictions/finetuned/<model>/<set>.jsonl` and
`metrics/evaluate.json` (zero-shot figures per set, the fine-tuned ones under `<set>.finetuned`).
"""

from vital.evaluate import run
from vital.stage import run_stage


def main() -> None:
    run_stage("evaluate", run)


if __name__ == "__main__":
    main()
