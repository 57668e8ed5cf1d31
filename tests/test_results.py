"""Numbers come from metrics: docs/results.md and README's results block are renderings of the committed
metrics files, and README quotes no result figure outside that block (issue 22)."""

from __future__ import annotations

import re
from pathlib import Path

from vital.paths import Paths
from vital.results import BEGIN, END, findings, label_value, readme_block, render, t_interval, verdict

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


def test_findings_are_every_verdict_the_docs_state():
    """tests/test_conclusions.py compares ``findings`` across kernels: it must hold every rendered verdict."""
    paths = Paths(ROOT)
    pattern = r"\*\*finding: (?:higher|lower)\*\*|no finding \(interval includes 0\)"
    bench = "\n".join(label_value(paths.plots / "label_value.csv"))  # a bench's table, not a stage's
    rendered = len(re.findall(pattern, render(paths))) - len(re.findall(pattern, bench))
    found = findings(paths)
    assert rendered == len(found) > 0
    assert all(v[2] in render(paths) for v in found.values())
