"""Stage tune: instruction-tune the base LLaVA on a curated subset (vital/pipeline.py has the table, `vital run tune` the same)."""

from vital.stage import main

if __name__ == "__main__":
    main("tune")
