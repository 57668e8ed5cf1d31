"""sample: domain-stratified, seeded sample of figure records from the corpus."""

from vital.sample import run
from vital.stage import run_stage


def main() -> None:
    def sample(p, paths):
        result = run(paths.figures, paths.sample, paths.metric("sample"), p.sample)
        print(f"sample: {result['sampled']} figures, {result['skipped']} records skipped -> {paths.sample}")

    run_stage("sample", sample)


if __name__ == "__main__":
    main()
