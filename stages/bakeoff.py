"""Stage bakeoff: selection methods compared on the same pool (vital/pipeline.py has the table, `vital run bakeoff` the same)."""

from vital.stage import main

if __name__ == "__main__":
    main("bakeoff")
