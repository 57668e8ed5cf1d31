"""Stage control_evaluate (bakeoff/dvc.yaml; vital/pipeline.py has the table, `vital run control_evaluate` the same)."""

from vital.stage import main

if __name__ == "__main__":
    main("control_evaluate")
