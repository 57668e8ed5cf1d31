"""Stage control_tune (bakeoff/dvc.yaml; vital/pipeline.py has the table, `vital run control_tune` the same)."""

from vital.stage import main

if __name__ == "__main__":
    main("control_tune")
