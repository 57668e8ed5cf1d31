"""align: assemble the base LLaVA from the foundation encoders and align it on figure captions."""

from vital.llava import align
from vital.params import Params
from vital.paths import Paths
from vital.stage import run_stage


def _run(p: Params, paths: Paths) -> None:
    align.run(
        foundation_dir=paths.foundation,
        figures=paths.figures,
        corpus_root=paths.corpus,
        out=paths.base_model,
        ap=p.align,
        checkpoint_dir=paths.root / ".vital" / "checkpoints" / "align",
        metrics_path=paths.metric("align"),
        curve_path=paths.plots / "align_loss.csv",
    )


def main() -> None:
    run_stage("align", _run)


if __name__ == "__main__":
    main()
