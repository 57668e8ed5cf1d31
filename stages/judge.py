"""Stage judge: 0-10 rubric score per candidate (model preference) (vital/pipeline.py has the table, `vital run judge` the same)."""

from vital.stage import main

if __name__ == "__main__":
    main("judge")
