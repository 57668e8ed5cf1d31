"""Stage labels: clinician preferences (simulated, or files from data/labels) (vital/pipeline.py has the table, `vital run labels` the same)."""

from vital.stage import main

if __name__ == "__main__":
    main("labels")
