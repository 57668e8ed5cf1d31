"""labels: clinicians' preferences over candidates (simulated clinicians or real label files)."""

from vital.labels import run
from vital.params import load_params
from vital.paths import Paths


def main() -> None:
    p = load_params()
    paths = Paths()
    result = run(p.labels, paths)
    print(
        f"labels ({result['backend']}): {result['labels']} preferences on {result['tasks']} figures, "
        f"{result['skipped']} skipped -> {paths.labels}"
    )


if __name__ == "__main__":
    main()
