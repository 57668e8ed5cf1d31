"""Stage evaluate: zero-shot VQA of every tuned model and the base (vital/pipeline.py has the table, `vital run evaluate` the same)."""

from vital.stage import main

if __name__ == "__main__":
    main("evaluate")
