"""Stage foundation: pretrain the demo's tiny CLIP on the corpus (or record the pretrained checkpoint)."""

from vital.foundation import run
from vital.stage import run_stage


def main() -> None:
    run_stage("foundation", lambda p, paths: run(p.foundation, paths))


if __name__ == "__main__":
    main()
