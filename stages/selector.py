"""Stage select (file named selector.py: a stages/select.py would shadow the stdlib `select` module
for every script run from stages/): train the selection model and score every candidate."""

from vital.selector import run
from vital.stage import run_stage


def main() -> None:
    run_stage("select", lambda p, paths: run(p.selector, paths))


if __name__ == "__main__":
    main()
