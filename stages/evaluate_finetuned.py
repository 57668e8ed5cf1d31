"""Stage evaluate_finetuned: each fine-tuned model on the test split of its set (vital/pipeline.py has the table, `vital run evaluate_finetuned` the same)."""

from vital.stage import main

if __name__ == "__main__":
    main("evaluate_finetuned")
