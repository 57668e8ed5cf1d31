"""Stage embed: image and text features of every candidate (vital/pipeline.py has the table, `vital run embed` the same)."""

from vital.stage import main

if __name__ == "__main__":
    main("embed")
