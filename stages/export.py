"""Stage export: the release of curated subsets as LLaVA JSON + images and as a Hugging Face dataset (vital/pipeline.py has the table, `vital run export` the same)."""

from vital.stage import main

if __name__ == "__main__":
    main("export")
