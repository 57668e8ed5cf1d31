"""Numbers come from metrics: docs/results.md and README's results block are renderings of the committed
metrics files, and README quotes no result figure outside that block (issue 22)."""

from __future__ import annotations

import json
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


# ------------------------------------------------------------------ result figures in docs/
FIGURE = re.compile(
    r"(?<![\w.])(?!\d{4}\.\d{4,5}\b)[−+-]?\d+\.\d{2,}(?!\.?\d)"
)  # not versions (0.46.1), arXiv ids
METRIC = re.compile(r"<!--\s*metric:\s*(\S+)\s+(\S+)\s*-->")
HISTORICAL = re.compile(
    r"historical.*\d{4}-\d{2}-\d{2}.*`[^`]+`|`[^`]+`.*\d{4}-\d{2}-\d{2}.*historical", re.I
)


def _metric_value(path: str, key: str):
    value = json.loads((ROOT / path).read_text())
    for part in key.split("."):
        value = value[part] if isinstance(value, dict) else value[int(part)]
    return value


def bare_figures(text: str) -> list[tuple[int, str]]:
    """(line, figure) of every result figure not rendered, not checked against a metrics file by its
    ``<!-- metric: FILE KEY -->`` annotation, and not in a section whose heading marks it historical with a
    date and the command that measured it. Figures in code (fenced or inline) are commands and params."""
    text = re.sub(r"```.*?```", lambda m: "\n" * m.group(0).count("\n"), text, flags=re.S)
    bare, historical_level = [], None
    for n, line in enumerate(text.splitlines(), 1):
        heading = re.match(r"(#+)\s", line)
        if heading:
            level = len(heading.group(1))
            if historical_level is not None and level <= historical_level:
                historical_level = None
            if historical_level is None and HISTORICAL.search(line):
                historical_level = level
            continue
        if historical_level is not None:
            continue
        prose = re.sub(r"`[^`]*`", lambda m: " " * len(m.group(0)), line)
        for fig in FIGURE.finditer(prose):
            after = prose[fig.end() :]
            note = METRIC.match(after.lstrip(" *%)")) if not FIGURE.search(after.split("<!--")[0]) else None
            if note is None:
                bare.append((n, fig.group(0)))
                continue
            value = _metric_value(note.group(1), note.group(2))
            decimals = len(fig.group(0).split(".")[1])
            if round(float(fig.group(0).replace("−", "-")), decimals) != round(value, decimals):
                bare.append((n, f"{fig.group(0)} but {note.group(1)} {note.group(2)} = {value}"))
    return bare


def test_docs_quote_no_result_figure_without_a_metrics_source():
    """Every result figure in docs/ is rendered (docs/results.md), annotated with the metrics file and key
    that hold it (checked here), or in a section headed historical with its date and command (issue 22)."""
    flagged = [
        f"{doc.name}:{n} {fig}"
        for doc in sorted((ROOT / "docs").glob("*.md"))
        if doc.name != "results.md"
        for n, fig in bare_figures(doc.read_text())
    ]
    assert flagged == [], f"figures without a metrics source (annotate or mark historical): {flagged}"


def test_a_bare_figure_is_flagged_and_an_annotated_or_historical_one_is_not():
    assert bare_figures("The selector agrees 0.766 of the time.\n") == [(1, "0.766")]
    select = json.loads((ROOT / "metrics" / "detail" / "select.json").read_text())
    value = select["detail"]["heldout_human"]["selector"]["agreement"]
    key = "metrics/detail/select.json detail.heldout_human.selector.agreement"
    good = f"It agrees {value:.3f} <!-- metric: {key} --> here.\n"
    assert bare_figures(good) == []
    wrong = good.replace(f"{value:.3f}", f"{value + 0.1:.3f}")
    assert bare_figures(wrong)[0][1].startswith(f"{value + 0.1:.3f} but metrics/detail/select.json")
    old = "## Measured (historical: 2026-12-04, `make demo`)\n\nIt agreed 0.741.\n\n## Now\n\nIt agrees 0.766.\n"
    assert bare_figures(old) == [(7, "0.766")]
    assert bare_figures("## Measured (historical)\n\nIt agreed 0.741.\n") == [(3, "0.741")]  # no date/command
    assert bare_figures("Version 0.46.1, `lr: 0.001`, 2e-5, 1.5 and arXiv 2410.09335.\n") == []


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
