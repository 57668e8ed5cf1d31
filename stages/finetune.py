"""Stages finetune and finetune_base: LLaVA-Med's VQA protocol, one model fine-tuned on every
`finetune.sets` train split (vital/pipeline.py has the table).

python stages/finetune.py --model models/tuned/top-s0 --name top-s0 --seed 0
"""

from vital.stage import main

if __name__ == "__main__":
    main("finetune")
