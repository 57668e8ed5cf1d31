"""chat_eval: judge-scored open visual chat on the evaluate stage's predictions (see vital/chat_eval.py).

Reads params `chat_eval` (and `evaluate.sets`/`evaluate.models`), `artifacts/predictions`, `data/vqa`;
writes `artifacts/chat_eval/judgments.jsonl` and `metrics/chat_eval.json`.
"""

from vital.chat_eval import run
from vital.stage import run_stage


def main() -> None:
    run_stage("chat_eval", run)


if __name__ == "__main__":
    main()
