"""Stage fetch: the sampled figures' PMC packages -> artifacts/figures (vital/pipeline.py has the table, `vital run fetch` the same)."""

from vital.stage import main

if __name__ == "__main__":
    main("fetch")
