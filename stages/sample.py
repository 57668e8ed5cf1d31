"""Stage sample: domain-stratified, seeded sample of figure records (vital/pipeline.py has the table, `vital run sample` the same)."""

from vital.stage import main

if __name__ == "__main__":
    main("sample")
