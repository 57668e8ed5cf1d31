"""Stage pairs: model and human preference pairs, held-out split by figure (vital/pipeline.py has the table, `vital run pairs` the same)."""

from vital.stage import main

if __name__ == "__main__":
    main("pairs")
