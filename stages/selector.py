"""Stage select: train the selection model, score every candidate (vital/pipeline.py has the table).

The file is named selector.py: a stages/select.py would shadow the stdlib `select` module for every script
run from stages/."""

from vital.stage import main

if __name__ == "__main__":
    main("select")
