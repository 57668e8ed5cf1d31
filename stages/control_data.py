"""Stage control_data (bakeoff/dvc.yaml; vital/pipeline.py has the table, `vital run control_data` the same)."""

from vital.stage import main

if __name__ == "__main__":
    main("control_data")
