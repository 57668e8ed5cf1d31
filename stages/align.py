"""Stage align: assemble the base LLaVA and align it on captions (pretrained: record the checkpoint) (vital/pipeline.py has the table, `vital run align` the same)."""

from vital.stage import main

if __name__ == "__main__":
    main("align")
