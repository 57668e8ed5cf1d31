"""Numbers come from metrics: docs/results.md and README's results block are renderings of the committed
metrics files, and README quotes no result figure outside that block (issue 22)."""

from __future__ import annotations

import re
from pathlib import Path

from vital.paths import Paths
from vital.results import BEGIN, END, readme_block, render, t_interval, verdict

ROOT = Path(__file__).resolve().parents[1]


def test_docs_results_is_the_rendering_of_the_committed_metrics():
    assert (ROOT / "docs" / "results.md").read_text() == render(Paths(ROOT)), (
        "docs/results.md differs from the metrics: run `vital report --results`"
    )


def test_readme_results_block_is_the_rendering_of_the_committed_metrics():
    text = (ROOT / "README.md").read_text()
    block = BEGIN + text.split(BEGIN, 1)[1].split(END, 1)[0] + END
    assert block == readme_block(Paths(ROOT)), "README's results block differs: run `vital report --results`"


def test_readme_quotes_no_result_figure_outside_the_generated_block():
    """A figure with three decimals outside code and outside the generated block is a result typed by hand."""
    text = (ROOT / "README.md").read_text()
    head, rest = text.split(BEGIN, 1)
    prose = head + rest.split(END, 1)[1]
    prose = re.sub(r"```.*?```", "", prose, flags=re.S)
    prose = re.sub(r"`[^`]*`", "", prose)
    typed = re.findall(r"(?<![\w.])[−+-]?\d+\.\d{3}(?!\d)", prose)
    assert typed == [], f"README quotes {typed[:10]} outside the results block: put them in metrics"


def test_intervals_and_verdicts():
    lo, hi = t_interval({"mean": 0.1, "std": 0.05, "n": 3})
    assert round(lo, 4) == round(0.1 - 4.303 * 0.05 / 3**0.5, 4) and hi > 0.1
    assert verdict((0.01, 0.2)).startswith("**finding: higher")
    assert verdict((-0.2, -0.01)).startswith("**finding: lower")
    assert verdict((-0.1, 0.2)).startswith("no finding")
    assert t_interval({"mean": 0.1, "std": 0.05, "n": 1}) is None


def test_a_metric_the_positive_control_found_blind_makes_no_selection_claim():
    from vital.results import NO_POWER, control, downstream, powerless

    ctl = {
        "seeds": [0, 1, 2],
        "figures": 480,
        "demo": {
            "per_seed": {
                "truth": {
                    str(s): {"closed_accuracy": 0.5, "hallucination_claim_rate": 0.1} for s in range(3)
                },
                "flawed": {
                    str(s): {"closed_accuracy": 0.5, "hallucination_claim_rate": 0.3} for s in range(3)
                },
            },
            "truth_minus_flawed": {
                "closed_accuracy": {"mean": 0.0, "ci95": [-0.1, 0.1], "has_power": False},
                "hallucination_claim_rate": {"mean": -0.2, "ci95": [-0.25, -0.15], "has_power": True},
            },
            "no_power": ["closed_accuracy"],
        },
    }
    blind = powerless(ctl)
    assert blind == {"closed_accuracy"}
    table = "\n".join(control(ctl))
    assert "| closed_accuracy | 0.500, 0.500, 0.500 | 0.500, 0.500, 0.500 | +0.000 |" in table
    assert "no power on the demo" in table and "**has power**" in table
    # a downstream gain whose interval excludes 0 is a finding, unless its metric has no power
    gain = {"mean": 0.1, "std": 0.01, "n": 3}
    over = {
        "closed_accuracy": {"mean": 0.6, "std": 0.01},
        "hallucination_claim_rate": {"mean": 0.1, "std": 0.01},
    }
    m = {
        "keep": 40,
        "seeds": [0, 1, 2],
        "demo": {
            "judge": {
                "over_seeds": over,
                "minus_random": {"closed_accuracy": gain, "hallucination_claim_rate": {**gain, "mean": -0.1}},
            }
        },
    }
    rows = [line for line in downstream(m, blind) if line.startswith("| judge")]
    assert rows[0].startswith("| judge | closed_accuracy") and rows[0].endswith(f"| {NO_POWER} |")
    assert rows[1].startswith("| judge | hallucination_claim_rate") and "**finding: lower**" in rows[1]
    assert "**finding: higher**" in downstream(m, set())[4]  # without the control, the same gain is a finding
