"""labels: clinicians' preferences over candidates (simulated clinicians or real label files)."""

from vital.labels import LabelsError, run
from vital.stage import run_stage


def main() -> None:
    def labels(p, paths):
        result = run(p.labels, paths)
        print(
            f"labels ({result['backend']}): {result['labels']} preferences on {result['tasks']} figures, "
            f"{result['skipped']} skipped -> {paths.labels}"
        )

    run_stage("labels", labels, errors=(LabelsError,))


if __name__ == "__main__":
    main()
