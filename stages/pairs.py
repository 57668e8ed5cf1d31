"""Stage pairs: selector training/evaluation pairs from judge scores and clinician labels."""

from vital.pairs import run
from vital.stage import run_stage


def main() -> None:
    run_stage("pairs", lambda p, paths: run(p.pairs, paths))


if __name__ == "__main__":
    main()
