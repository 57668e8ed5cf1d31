"""docs/results.md and README's results block, rendered from the metrics files, never typed by hand.

`vital report --results` rewrites both; a test renders them again from the committed metrics and fails on any
difference, so a figure in the docs is always one a metrics file holds. A difference between two methods is
called a finding only when its 95% interval over seeds (or figures) excludes 0, and a downstream metric makes
no selection claim when the positive control (``metrics/detail/control_evaluate.json``) found it without power.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from vital.paths import Paths
from vital.report.metrics import StageMetrics

BEGIN, END = "<!-- results:begin (vital report --results) -->", "<!-- results:end -->"
# two-sided 95% Student t quantiles by degrees of freedom; the normal's beyond
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def _f(x, nd: int = 3) -> str:
    return f"{x:.{nd}f}" if isinstance(x, int | float) else "-"


def _s(x, nd: int = 3) -> str:
    return f"{x:+.{nd}f}" if isinstance(x, int | float) else "-"


def t_interval(d: dict) -> tuple[float, float] | None:
    """95% t-interval of a mean over seeds from {mean, std, n}."""
    n, mean, std = d.get("n"), d.get("mean"), d.get("std")
    if not isinstance(n, int) or n < 2 or mean is None or std is None:
        return None
    half = _T95.get(n - 1, 1.96) * std / math.sqrt(n)
    return mean - half, mean + half


def verdict(ci) -> str:
    if not ci:
        return "no interval"
    lo, hi = ci
    if lo > 0:
        return "**finding: higher**"
    if hi < 0:
        return "**finding: lower**"
    return "no finding (interval includes 0)"


NO_POWER = "no claim: no power on the demo (positive control)"


def powerless(control: dict) -> set[str]:
    """Downstream metrics the positive control (metrics/detail/control_evaluate.json) found blind: truth - flawed has an
    interval that does not exclude 0 the right way. No selection claim is made with them."""
    return {m for b in control.values() if isinstance(b, dict) for m in b.get("no_power") or []}


def claim_verdict(ci, metric: str, blind: set[str]) -> str:
    return NO_POWER if metric in blind else verdict(ci)


def _ci(ci) -> str:
    return f"[{_s(ci[0])}, {_s(ci[1])}]" if ci else "-"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(r) + " |" for r in rows),
    ]


def selection(m: dict) -> list[str]:
    held = m.get("heldout_human") or {}
    if not held:
        return []
    rows = [
        [who.replace("_", " "), _f((held.get(who) or {}).get("agreement"))]
        for who in ("selector", "judge", "random", "clinician_vs_clinician")
        if held.get(who)
    ]
    lines = [
        f"Agreement with {held.get('pairs')} held-out clinician pairs on {held.get('figures')} figures "
        "(`metrics/detail/select.json`, `heldout_human`):",
        "",
        *_table(["rater", "agreement"], rows),
        "",
    ]
    for key in ("selector_minus_judge", "selector_minus_weight0"):
        d, seeds = held.get(key), held.get(f"{key}_over_seeds")
        if isinstance(seeds, dict) and seeds.get("ci95"):  # one seed's verdict would hide the training noise
            if isinstance(d, dict):
                lines.append(
                    f"- {key.replace('_', ' ')}, the first selector seed alone: {_s(d.get('difference'))} "
                    "(no verdict from one seed)"
                )
            per_seed = ", ".join(f"{_s(v)}" for v in (seeds.get("difference_by_seed") or {}).values())
            lines.append(
                f"- {key.replace('_', ' ')} averaged over selector seeds {seeds.get('seeds')} ({per_seed}): "
                f"{_s(seeds.get('difference_mean'))}, 95% CI {_ci(seeds['ci95'])}: {verdict(seeds['ci95'])}"
            )
        elif isinstance(d, dict) and d.get("ci95"):
            lines.append(
                f"- {key.replace('_', ' ')}: {_s(d.get('difference'))}, 95% figure-bootstrap CI "
                f"{_ci(d['ci95'])}: {verdict(d['ci95'])}"
            )
    return [*lines, ""]


def _over(d: dict | None) -> str:
    return f"{_f(d.get('mean'))} ± {_f(d.get('std'))}" if isinstance(d, dict) else "-"


def vqa(m: dict, title: str, gains: tuple[str, ...], blind: set[str] = frozenset()) -> list[str]:
    lines = []
    for name, res in m.items():
        if name.startswith("_") or not isinstance(res, dict):
            continue
        groups = [g for g in ("base_over_seeds", "top_over_seeds", "random_over_seeds") if res.get(g)]
        keys = [
            k
            for k in ("closed_accuracy", "open_recall", "closed_discrimination", "open_recall_modality")
            if k in ("closed_accuracy", "open_recall", "closed_discrimination")
            or any(isinstance((res.get(g) or {}).get(k), dict) for g in groups)
        ]
        rows = [[g.replace("_over_seeds", ""), *(_over(res[g].get(k)) for k in keys)] for g in groups]
        if "base" in res and "base_over_seeds" not in res:
            rows.insert(0, ["base (one model)", *(_f(res["base"].get(k)) for k in keys)])
        lines += [f"**{name}**, {title}: mean ± sd over seeds (`{'/'.join(groups)}`)", ""]
        lines += _table(["models", *keys], rows) + [""]
        grows = []
        for gain in gains:
            for k, d in (res.get(gain) or {}).items():
                ci = t_interval(d)
                grows.append(
                    [
                        gain.replace("_minus_", " − "),
                        k,
                        _s(d.get("mean")),
                        _ci(ci),
                        f"{d.get('wins')}/{d.get('n')}",
                        claim_verdict(ci, k, blind),
                    ]
                )
        if grows:
            lines += _table(["difference", "metric", "mean", "95% t-interval", "wins", "verdict"], grows) + [
                ""
            ]
    return lines


def bakeoff(m: dict) -> list[str]:
    head, rows = m.get("headline"), []
    for k, row in (m.get("vs_random") or {}).items():
        r = (row.get("random") or {}).get(head) or {}
        rows.append([f"{k}%", "random", f"{_f(r.get('mean'))} ± {_f(r.get('std'))}", "-", "-", "-", "-"])
        for method, e in row.items():
            if method == "random" or head not in e:
                continue
            h = e[head]
            d = h.get("minus_random") or {}
            rows.append(
                [
                    f"{k}%",
                    method,
                    _f(h.get("value")),
                    f"{_s(d.get('mean'))} ± {_f(d.get('std'))}",
                    _ci(h.get("ci95")),
                    str(h.get("wins")),
                    verdict(h.get("ci95")),
                ]
            )
    if not rows:
        return []
    better = "lower" if head in (m.get("lower_is_better") or []) else "higher"
    return [
        f"Share `{head}` of each method's top-k% ({better} is better; {m.get('quality_scorer')} quality), "
        "minus random over the random seeds (`metrics/detail/bakeoff.json`, `vs_random`):",
        "",
        *_table(["k", "method", head, "− random", "95% CI", "wins", "verdict"], rows),
        "",
    ]


def hallucination(m: dict, blind: set[str] = frozenset()) -> list[str]:
    """metrics/detail/evaluate.json's hallucination block: each model's descriptions of the held-out figures."""
    h = m.get("_hallucination")
    if not isinstance(h, dict):
        return []
    groups = [g for g in ("top_over_seeds", "random_over_seeds") if h.get(g)]
    rows = [
        [g.replace("_over_seeds", ""), *(_over(h[g].get(k)) for k in ("claim_rate", "answer_rate"))]
        for g in groups
    ]
    if isinstance(h.get("base"), dict):
        rows.insert(
            0, ["base (one model)", _f(h["base"].get("claim_rate")), _f(h["base"].get("answer_rate"))]
        )
    lines = [
        "Hallucination rate of each model's descriptions of the held-out VQA figures, every claim checked "
        "against their hidden truth (`metrics/detail/evaluate.json`, `_hallucination`; lower is better):",
        "",
        *_table(["models", "wrong claims / checked", "answers with a wrong claim"], rows),
        "",
    ]
    d = (h.get("top_minus_random") or {}).get("claim_rate")
    if isinstance(d, dict):
        ci = t_interval(d)
        lines += [
            f"- top − random, wrong-claim rate: {_s(d.get('mean'))}, 95% t-interval {_ci(ci)} "
            f"({d.get('wins')}/{d.get('n')} seeds higher): {claim_verdict(ci, 'hallucination_claim_rate', blind)}",
            "",
        ]
    return lines


def control(m: dict) -> list[str]:
    """metrics/detail/control_evaluate.json: the positive control of every downstream metric."""
    lines = []
    for name, block in m.items():
        if not isinstance(block, dict) or "truth_minus_flawed" not in block:
            continue
        per = block.get("per_seed") or {}
        rows = []
        for metric, d in block["truth_minus_flawed"].items():
            arms = [[r.get(metric) for r in (per.get(a) or {}).values()] for a in ("truth", "flawed")]
            rows.append(
                [
                    metric,
                    *(", ".join(_f(v) for v in vals) for vals in arms),
                    _s(d.get("mean")),
                    _ci(d.get("ci95")),
                    "**has power**" if d.get("has_power") else "no power on the demo",
                ]
            )
        lines += [
            f"**{name}**: the base tuned on {m.get('figures')} figures with conversations written from the hidden "
            f"truth or with one wrong finding each, tune's budget, seeds {m.get('seeds')} "
            "(`metrics/detail/control_evaluate.json`, `make bakeoff`). A metric without power makes no selection claim here:",
            "",
            *_table(
                ["metric", "truth arm (per seed)", "flawed arm", "truth − flawed", "95% t-interval", "power"],
                rows,
            ),
            "",
        ]
    return lines


# the downstream bake-off's rows: rendered by downstream(), stated as findings by downstream_findings()
# (per kind: the modality questions, the one finding the demo LLM reads from the image; docs/tuning.md)
DOWNSTREAM_METRICS = (
    "closed_accuracy",
    "open_recall",
    "hallucination_claim_rate",
    "open_recall_modality",
    "closed_discrimination_modality",
)


def downstream(m: dict, blind: set[str] = frozenset()) -> list[str]:
    lines = []
    for name, row in m.items():
        if not isinstance(row, dict) or name in ("keep", "seeds"):
            continue
        rows = []
        for method, e in row.items():
            o, g = e.get("over_seeds") or {}, e.get("minus_random") or {}
            for k in DOWNSTREAM_METRICS:
                if k not in o:
                    continue
                ci = t_interval(g.get(k) or {})
                rows.append(
                    [
                        method,
                        k,
                        _over(o.get(k)),
                        _s((g.get(k) or {}).get("mean")),
                        _ci(ci),
                        claim_verdict(ci, k, blind),
                    ]
                )
        lines += [
            f"**{name}**, {m.get('keep')}% subsets, zero-shot, over seeds {m.get('seeds')} "
            "(`metrics/detail/bakeoff_evaluate.json`):",
            "",
            *_table(["method", "metric", "mean ± sd", "− random", "95% t-interval", "verdict"], rows),
            "",
        ]
    return lines


def chat(m: dict) -> list[str]:
    lines = []
    for name, res in m.items():
        if not isinstance(res, dict):
            continue
        rel = res.get("relative") or {}
        rows = [[model, _f(r.get("relative_score"), 1), str(r.get("n"))] for model, r in rel.items()]
        if rows:
            lines += [
                f"**{name}** open answers scored against the references (`metrics/detail/chat_eval.json`):",
                "",
            ]
            lines += _table(["model", "relative score", "questions"], rows) + [""]
        w = res.get("win_rate")
        if isinstance(w, dict) and "win_rate" in w:
            lines += [
                f"- win rate {w.get('a')} over {w.get('b')}: {_f(w.get('win_rate'))} ({w.get('wins')} "
                f"wins, {w.get('losses')} losses, {w.get('ties')} ties)",
                "",
            ]
    return lines


def label_value(csv_path: Path) -> list[str]:
    """The bias sweep of bench/label_value.py: when do clinician labels pay over the judge?"""
    import csv

    if not csv_path.is_file():
        return []
    rows = []
    for r in csv.DictReader(csv_path.open()):
        ci = (float(r["selector_minus_judge_ci_low"]), float(r["selector_minus_judge_ci_high"]))
        rows.append(
            [
                r["bias_scale"],
                _f(float(r["judge_heldout_agreement"])),
                _s(float(r["selector_minus_judge"])),
                _ci(ci),
                verdict(ci),
                f"{_f(float(r['flawed_judge']))} / {_f(float(r['flawed_selector']))}",
                _s(float(r["flawed_selector_minus_judge"])),
                f"[{_s(float(r['flawed_selector_minus_judge_min']))}, "
                f"{_s(float(r['flawed_selector_minus_judge_max']))}]",
            ]
        )
    return [
        "Held-out clinician agreement and hidden-truth flawed share (top 40% of all candidates, ranked "
        "globally) at 0, 1 and 2 times the demo judge's default biases, three selector seeds each "
        "(`python bench/label_value.py`, `metrics/plots/label_value.csv`; a bench run, not a stage of "
        "`make demo`):",
        "",
        *_table(
            [
                "bias scale",
                "judge agreement",
                "selector − judge",
                "95% CI",
                "verdict",
                "flawed: judge / selector",
                "selector − judge",
                "seed range",
            ],
            rows,
        ),
        "",
    ]


def selection_findings(m: dict) -> dict[str, tuple[float | None, list | None]]:
    """Every difference ``selection`` gives a verdict: name -> (mean, 95% interval)."""
    held = m.get("heldout_human") or {}
    out: dict[str, tuple[float | None, list | None]] = {}
    for key in ("selector_minus_judge", "selector_minus_weight0"):
        d, seeds = held.get(key), held.get(f"{key}_over_seeds")
        if isinstance(seeds, dict) and seeds.get("ci95"):
            out[f"select: {key}_over_seeds"] = (seeds.get("difference_mean"), seeds["ci95"])
        elif isinstance(d, dict) and d.get("ci95"):
            out[f"select: {key}"] = (d.get("difference"), d["ci95"])
    return out


def bakeoff_findings(m: dict) -> dict[str, tuple[float | None, list | None]]:
    """Every difference ``bakeoff`` gives a verdict: name -> (mean, 95% interval)."""
    head, out = m.get("headline"), {}
    for k, row in (m.get("vs_random") or {}).items():
        for method, e in row.items():
            if method != "random" and head in e:
                h = e[head]
                out[f"bakeoff: {method} - random, {head}, top {k}%"] = (
                    (h.get("minus_random") or {}).get("mean"),
                    h.get("ci95"),
                )
    return out


def _t_finding(d) -> tuple[float | None, list | None] | None:
    if not isinstance(d, dict) or "mean" not in d:
        return None
    ci = t_interval(d)
    return d.get("mean"), list(ci) if ci else None


def vqa_findings(m: dict, gains: tuple[str, ...], where: str) -> dict[str, tuple[float | None, list | None]]:
    """Every over-seeds difference ``vqa`` gives a verdict (t-interval): name -> (mean, CI)."""
    out = {}
    for name, res in m.items():
        if name.startswith("_") or not isinstance(res, dict):
            continue
        for gain in gains:
            for k, d in (res.get(gain) or {}).items():
                if (f := _t_finding(d)) is not None:
                    out[f"{where}: {name} {gain} {k}"] = f
    return out


def hallucination_findings(m: dict) -> dict[str, tuple[float | None, list | None]]:
    """The verdict ``hallucination`` gives (top - random wrong-claim rate, t-interval): name -> (mean, CI)."""
    h = m.get("_hallucination")
    f = _t_finding(((h.get("top_minus_random") or {}) if isinstance(h, dict) else {}).get("claim_rate"))
    return {} if f is None else {"evaluate: top_minus_random hallucination_claim_rate": f}


def downstream_findings(m: dict) -> dict[str, tuple[float | None, list | None]]:
    """Every difference ``downstream`` gives a verdict (t-interval): name -> (mean, CI)."""
    out = {}
    for name, row in m.items():
        if not isinstance(row, dict) or name in ("keep", "seeds"):
            continue
        for method, e in row.items():
            for k in DOWNSTREAM_METRICS:
                f = _t_finding(((e.get("minus_random") or {}) if isinstance(e, dict) else {}).get(k))
                if f is not None:
                    out[f"downstream: {name} {method} - random {k}"] = f
    return out


def findings(paths: Paths) -> dict[str, tuple[float | None, list | None, str]]:
    """Every verdict docs/results.md and README state, by name: (mean, 95% interval, verdict). The test of
    conclusions across float kernels (tests/test_conclusions.py) compares these between runs. A downstream
    difference in a metric the positive control found blind is stated as no claim at all, so it is not here."""
    p = StageMetrics(paths.root).detail
    blind = powerless(p("control_evaluate"))
    downstream = {
        **vqa_findings(p("evaluate"), ("top_minus_random",), "evaluate"),
        **hallucination_findings(p("evaluate")),
        **vqa_findings(p("evaluate_finetuned"), ("top_minus_random", "top_minus_base"), "finetuned"),
        **downstream_findings(p("bakeoff_evaluate")),
    }
    out = {
        **selection_findings(p("select")),
        **bakeoff_findings(p("bakeoff")),
        **{name: f for name, f in downstream.items() if name.rsplit(" ", 1)[-1] not in blind},
    }
    return {name: (mean, ci, verdict(ci)) for name, (mean, ci) in out.items()}


def render(paths: Paths) -> str:
    """The whole of docs/results.md."""
    p = StageMetrics(paths.root).detail
    blind = powerless(p("control_evaluate"))
    parts = [
        "# Results of the committed run",
        "",
        "Generated by `vital report --results` from the metrics files of the run locked in `dvc.lock`; do not "
        "edit by hand (a test renders it again and fails on any difference). `vital report` says which sections "
        "are stale against the code and params in force. Intervals are 95%: figure-bootstrap where the metrics "
        "file gives one, else a t-interval over seeds. A difference is a finding only when its interval "
        "excludes 0.",
        "",
        "## Selection against held-out clinicians",
        "",
        *selection(p("select")),
        "## Selection bake-off on the demo's hidden truth",
        "",
        *bakeoff(p("bakeoff")),
        "## When clinician labels pay: the judge's biases",
        "",
        *label_value(paths.plots / "label_value.csv"),
        "## VQA, zero-shot (`make demo`)",
        "",
        *vqa(p("evaluate"), "zero-shot", ("top_minus_random",), blind),
        *hallucination(p("evaluate"), blind),
        "## Open answers (chat_eval)",
        "",
        *chat(p("chat_eval")),
        "## VQA after LLaVA-Med's fine-tuning protocol (`make vqa-finetune`)",
        "",
        *vqa(p("evaluate_finetuned"), "fine-tuned", ("top_minus_random", "top_minus_base"), blind),
        "## Positive control of the downstream instrument (`make bakeoff`)",
        "",
        *control(p("control_evaluate")),
        "## Downstream bake-off (`make bakeoff`)",
        "",
        *downstream(p("bakeoff_evaluate"), blind),
    ]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(parts)).rstrip() + "\n"


def readme_block(paths: Paths) -> str:
    """The README's short version: the selection and zero-shot headline, pointing at docs/results.md."""
    p = StageMetrics(paths.root).detail
    lines = [BEGIN, "", *selection(p("select"))]
    blind = powerless(p("control_evaluate"))
    lines += vqa(p("evaluate"), "zero-shot", ("top_minus_random",), blind)
    lines += [
        "Everything else (the bake-off, chat_eval, fine-tuned VQA, downstream bake-off): "
        "[docs/results.md](docs/results.md).",
        "",
        END,
    ]
    return "\n".join(lines)


def write(paths: Paths, readme: Path, results: Path) -> None:
    """Rewrite docs/results.md and the README block between the markers (which must be there)."""
    results.write_text(render(paths))
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        raise ValueError(f"{readme}: no results block ({BEGIN} ... {END}) to rewrite")
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    readme.write_text(head + readme_block(paths) + tail)
