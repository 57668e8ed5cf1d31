"""sample: domain-stratified, seeded sample of figure records from the corpus."""

from vital.params import load_params
from vital.paths import Paths
from vital.sample import run


def main() -> None:
    p = load_params()
    paths = Paths()
    result = run(paths.figures, paths.sample, paths.metric("sample"), p.sample)
    print(f"sample: {result['sampled']} figures, {result['skipped']} records skipped -> {paths.sample}")


if __name__ == "__main__":
    main()
