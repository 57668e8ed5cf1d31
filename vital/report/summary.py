"""``vital report``: a short, readable summary of a pipeline run, from the stages' evidence files."""

from __future__ import annotations

from vital.freshness import Freshness
from vital.paths import Paths
from vital.report.metrics import StageMetrics


def _fmt(x) -> str:
    return f"{x:.3f}" if isinstance(x, float) else ("-" if x is None else str(x))


def _model_lines(res: dict) -> list[str]:
    lines = []
    for model, m in res.items():
        if isinstance(m, dict) and isinstance(m.get("closed_accuracy"), float | int):
            legacy, recall = m.get("closed_accuracy_legacy"), m.get("open_recall")
            discrimination = m.get("closed_discrimination")
            lines.append(
                f"            {model:<12}{_fmt(m['closed_accuracy'])} ({_fmt(legacy)})"
                f" / {_fmt(discrimination)} / {_fmt(recall)}"
            )
    return lines


def _gain_lines(res: dict) -> list[str]:
    lines = []
    for gain in ("top_minus_random", "top_minus_base", "random_minus_base"):
        label = gain.replace("_minus_", " - ")
        for key, d in res.get(gain, {}).items():
            lines.append(
                f"            {label} {key}: {_fmt(d.get('mean'))} ± {_fmt(d.get('std'))}"
                f" over {d.get('n')} seeds ({d.get('wins')} wins)"
            )
    return lines


def _stale_line(freshness: Freshness | None, stage: str) -> list[str]:
    why = freshness.of(stage) if freshness is not None else None
    return [f"  !! {why}"] if why else []


def summary(paths: Paths, freshness: Freshness | None = None) -> str:
    """The key numbers; with ``freshness`` (vital.freshness.check), every section whose producing stage is not
    up to date with the code and params in force is marked so, with the command that refreshes it."""
    lines = []
    metrics = StageMetrics(paths.root)
    generated = metrics.evidence("generate")
    if generated:
        gen = generated.get("detail", {})
        lines += _stale_line(freshness, "generate")
        lines.append(
            f"generate  {gen.get('backend')}/{gen.get('model')}: {gen.get('candidates')} candidates, "
            f"{generated.get('failed', 0)} rejected {generated.get('failed_by_reason', {})}, "
            f"{gen.get('requests_sent', 0)} requests, ${gen.get('estimated_cost_usd') or 0:.2f}"
        )
    held = metrics.detail("select").get("heldout_human", {})
    if held:
        lines += _stale_line(freshness, "select")
        lines.append(f"select    agreement with {held.get('pairs')} held-out clinician pairs:")
        for who in ("selector", "judge", "random", "clinician_vs_clinician"):
            if isinstance(held.get(who), dict):
                lines.append(f"            {who:<24}{_fmt(held[who].get('agreement'))}")
        for key in ("selector_minus_judge", "selector_minus_weight0"):
            if isinstance(held.get(key), dict):
                d = held[key]
                lines.append(f"            {key:<24}{_fmt(d.get('difference'))}  95% CI {d.get('ci95')}")
    ev = metrics.detail("evaluate")
    for set_name, res in ev.items():
        if set_name.startswith("_") or not isinstance(res, dict):
            continue
        lines += _stale_line(freshness, "evaluate")
        lines.append(
            f"evaluate  {set_name}, zero-shot: closed-set accuracy (legacy substring) / yes-no discrimination"
            " / open-set recall"
        )
        lines += _model_lines(res)
        chance = res.get("chance", {})
        lines.append(
            f"            chance {_fmt(chance.get('closed_chance'))}, majority {_fmt(chance.get('closed_majority'))}"
        )
        lines += _gain_lines(res)
    for set_name, res in metrics.detail("evaluate_finetuned").items():
        if set_name.startswith("_") or not isinstance(res, dict):
            continue
        lines += _stale_line(freshness, "evaluate_finetuned")
        lines.append(
            f"evaluate  {set_name}, each model fine-tuned on its train split (LLaVA-Med's protocol):"
        )
        lines += _model_lines(res)
        lines += _gain_lines(res)
    lines += bakeoff_lines(metrics.detail("bakeoff"), metrics.detail("bakeoff_evaluate"), freshness)
    return "\n".join(lines) if lines else "no metrics yet: run `dvc repro`"


def bakeoff_lines(m: dict, downstream: dict, freshness: Freshness | None = None) -> list[str]:
    """The bake-off table: each method's headline quality per size, minus random (spread over random seeds,
    wins, bootstrap CI), its cost; then the downstream VQA over seeds, minus random."""
    lines: list[str] = []
    head = m.get("headline")
    if m and head:
        lines += _stale_line(freshness, "bakeoff")
        better = "lower" if head in m.get("lower_is_better", []) else "higher"
        lines.append(
            f"bakeoff   {head} share by method and subset size ({better} is better; "
            f"{m.get('quality_scorer')} quality), minus random over {len(m.get('seeds', []))} seeds:"
        )
        for k, row in m.get("vs_random", {}).items():
            r = row.get("random", {}).get(head, {})
            lines.append(f"            {k:>3}%  random {_fmt(r.get('mean'))} ± {_fmt(r.get('std'))}")
            for method, e in row.items():
                if method == "random":
                    continue
                h = e[head]
                d = h["minus_random"]
                lines.append(
                    f"                  {method:<12}{_fmt(h['value'])}  {d['mean']:+.3f} ± {d['std']:.3f} "
                    f"(wins {h['wins']}, 95% CI {h['ci95']})"
                )
    if m.get("cost"):
        lines.append("bakeoff   cost: CPU s scoring + upstream wall s / API $ / clinician labels")
        for method, c in m["cost"].items():
            lines.append(
                f"            {method:<12}{c['cpu_seconds_scoring']:.1f} + {c['upstream_wall_seconds']:.1f} s"
                f" / ${c['api_usd']:.2f} / {c['clinician_labels']}"
            )
    for set_name, row in downstream.items():
        if not isinstance(row, dict):
            continue
        lines += _stale_line(freshness, "bakeoff_evaluate")
        lines.append(
            f"bakeoff   downstream {set_name} ({downstream.get('keep')}% subsets): closed acc / legacy / open recall"
            " / yes-no likelihood acc (not LLaVA-Med's metric), mean ± std over seeds"
        )
        for method, e in row.items():
            o = e.get("over_seeds", {})
            cells = [
                f"{_fmt(o.get(k, {}).get('mean'))} ± {_fmt(o.get(k, {}).get('std'))}" for k in DOWNSTREAM
            ]
            lines.append(f"            {method:<12}{' / '.join(cells)}")
            gain = e.get("minus_random")
            if gain:
                cells = [_gain(gain.get(k)) for k in DOWNSTREAM]
                lines.append(f"              − random  {' / '.join(cells)}")
    return lines


DOWNSTREAM = ("closed_accuracy", "closed_accuracy_legacy", "open_recall", "yes_no_likelihood_accuracy")


def _gain(d: dict | None) -> str:
    """A per-seed difference: mean ± std and the seeds where the method won."""
    if not isinstance(d, dict) or d.get("mean") is None:
        return "-"
    return f"{float(d['mean']):+.3f} ± {float(d.get('std') or 0):.3f} ({d.get('wins')}/{d.get('n')} wins)"
