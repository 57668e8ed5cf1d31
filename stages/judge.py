"""Stage: judge (see vital/judge.py). Run from the repository root: `python stages/judge.py`."""

from vital.judge import run
from vital.stage import run_stage


def main() -> None:
    run_stage("judge", run)


if __name__ == "__main__":
    main()
