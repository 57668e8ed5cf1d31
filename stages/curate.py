"""Stage curate: top-k% subsets by selector score (+ same-size random baselines and mixtures)."""

from vital.curate import run
from vital.stage import run_stage


def main() -> None:
    run_stage("curate", lambda p, paths: run(p.curate, paths))


if __name__ == "__main__":
    main()
