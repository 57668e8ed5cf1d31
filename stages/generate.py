"""Stage: generate (see vital/generate.py). Run from the repository root: `python stages/generate.py`."""

from vital.generate import run
from vital.stage import run_stage


def main() -> None:
    run_stage("generate", run)


if __name__ == "__main__":
    main()
