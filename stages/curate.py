"""Stage curate: top-k% subsets, same-size random baselines, mixtures (vital/pipeline.py has the table, `vital run curate` the same)."""

from vital.stage import main

if __name__ == "__main__":
    main("curate")
