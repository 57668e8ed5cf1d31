import json

from vital import stats
from vital.io import write_json
from vital.paths import Paths
from vital.report import summary


def _evidence(paths: Paths, stage: str, detail: dict) -> None:
    """What run_stage writes for a stage whose entry returned ``detail``."""
    stats.write(paths.root, stats.StageStats.from_record(stage, detail, wall_s=1.0))


def test_summary_reads_the_stage_metrics(tmp_path):
    paths = Paths(tmp_path)
    assert "no metrics yet" in summary(paths)
    _evidence(paths, "select", {"heldout_human": {"pairs": 12, "judge": {"agreement": 0.75}}})
    _evidence(
        paths,
        "evaluate",
        {
            "demo": {
                "top-s0": {
                    "closed_accuracy": 0.8,
                    "closed_accuracy_legacy": 0.9,
                    "closed_discrimination": 0.6,
                    "open_recall": 0.5,
                },
                "top_over_seeds": {"closed_accuracy": {"mean": 0.8}},
                "chance": {"closed_chance": 0.5, "closed_majority": 0.6},
                "top_minus_random": {"closed_accuracy": {"mean": 0.1, "std": 0.0, "n": 1, "wins": 1}},
            },
            "_stage": {},
        },
    )
    _evidence(
        paths,
        "evaluate_finetuned",
        {
            "demo": {
                "base-s0": {"closed_accuracy": 0.7, "closed_discrimination": 0.4, "open_recall": 0.6},
                "top-s0": {"closed_accuracy": 0.9, "closed_discrimination": 0.8, "open_recall": 0.7},
                "top_minus_base": {"closed_accuracy": {"mean": 0.2, "std": 0.0, "n": 1, "wins": 1}},
            },
            "_stage": {},
        },
    )
    _evidence(paths, "generate", {"candidates": 7, "failed": 2, "failed_by_reason": {"refused": 2}})
    text = summary(paths)
    assert "7 candidates, 2 rejected {'refused': 2}" in text
    assert "12 held-out clinician pairs" in text and "judge" in text and "0.750" in text
    assert "top-s0      0.800 (0.900) / 0.600 / 0.500" in text
    assert "top_over_seeds" not in text and "top - random closed_accuracy: 0.100" in text
    fine = text[text.index("fine-tuned on its train split") :]
    assert "base-s0     0.700 (-) / 0.400 / 0.600" in fine and "top - base closed_accuracy: 0.200" in fine
    assert json.loads((tmp_path / "metrics" / "detail" / "select.json").read_text())["detail"][
        "heldout_human"
    ]


def test_summary_reads_a_revision_before_the_layout(tmp_path):
    """A pull request's base may predate metrics/detail/: the stage's whole record was metrics/<stage>.json."""
    paths = Paths(tmp_path)
    write_json(paths.metric("select"), {"heldout_human": {"pairs": 12, "judge": {"agreement": 0.75}}})
    assert "12 held-out clinician pairs" in summary(paths)


def test_summary_prints_the_bakeoff_table(tmp_path):

    from vital.paths import Paths
    from vital.report import summary

    paths = Paths(tmp_path)
    paths.metrics.mkdir(parents=True)
    gain = {"value": 0.05, "minus_random": {"mean": -0.4, "std": 0.02}, "wins": "3/3", "ci95": [-0.45, -0.33]}
    bakeoff = {
        "headline": "flawed",
        "lower_is_better": ["flawed"],
        "quality_scorer": "truth",
        "seeds": [0, 1, 2],
        "vs_random": {"40": {"random": {"flawed": {"mean": 0.45, "std": 0.02}}, "judge": {"flawed": gain}}},
        "cost": {
            "judge": {
                "cpu_seconds_scoring": 1.0,
                "upstream_wall_seconds": 7.2,
                "api_usd": 0.5,
                "clinician_labels": 0,
            }
        },
    }
    _evidence(paths, "bakeoff", bakeoff)
    seeds = {
        "closed_accuracy": {"mean": 0.6, "std": 0.1},
        "yes_no_likelihood_accuracy": {"mean": 0.7, "std": 0.0},
    }
    _evidence(
        paths,
        "bakeoff_evaluate",
        {
            "keep": 40,
            "demo": {
                "judge": {
                    "over_seeds": seeds,
                    "minus_random": {"open_recall": {"mean": 0.1, "std": 0.05, "wins": 3, "n": 3}},
                }
            },
        },
    )
    text = summary(paths)
    assert "flawed share by method and subset size (lower is better" in text
    assert "judge       0.050  -0.400 ± 0.020 (wins 3/3, 95% CI [-0.45, -0.33])" in text
    assert "$0.50 / 0" in text
    assert "not LLaVA-Med's metric" in text and "0.600 ± 0.100" in text and "0.700 ± 0.000" in text
    assert "− random  - / - / +0.100 ± 0.050 (3/3 wins) / -" in text
