"""Stage foundation: demo: pretrain the tiny CLIP and tokenizer; pretrained: record the checkpoints (vital/pipeline.py has the table, `vital run foundation` the same)."""

from vital.stage import main

if __name__ == "__main__":
    main("foundation")
