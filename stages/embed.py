"""Stage embed: image and text features of every candidate through the selector's backbone."""

from vital.embed import run
from vital.stage import run_stage


def main() -> None:
    run_stage("embed", lambda p, paths: run(p.embed, paths))


if __name__ == "__main__":
    main()
