"""Stage bakeoff_evaluate (bakeoff/dvc.yaml; vital/pipeline.py has the table, `vital run bakeoff_evaluate` the same)."""

from vital.stage import main

if __name__ == "__main__":
    main("bakeoff_evaluate")
