"""Stage generate: candidate conversations per sampled figure (vital/pipeline.py has the table, `vital run generate` the same)."""

from vital.stage import main

if __name__ == "__main__":
    main("generate")
