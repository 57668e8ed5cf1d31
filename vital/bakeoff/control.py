"""The positive control of the downstream instrument (``bakeoff/dvc.yaml``; issue 23).

``control_data`` writes ``artifacts/control/{truth,flawed}.json``: the same ``bakeoff.control_figures``
sampled figures, with conversations written from the hidden truth or with one wrong finding each
(:mod:`vital.demo.positive_control`). ``control_tune`` (arm x ``bakeoff.seeds``) tunes ``tune.base`` on
each with the tune section's budget, as ``bakeoff_tune`` does for a selection method. ``control_evaluate``
asks every model the ``evaluate.sets`` questions zero-shot and to describe every held-out figure (the
hallucination rate, :mod:`vital.vqa.hallucination`), and reports truth - flawed per metric over seeds
with its 95% t-interval. A metric whose interval does not exclude 0 in the right direction cannot see
what instruction data teaches on this world and budget: ``has_power: false``, and no selection claim is
made with it (:mod:`vital.results`).
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from vital.backends import Backend
from vital.io import read_jsonl, write_json
from vital.params import Params, ParamsError
from vital.paths import Paths
from vital.registry import choose

ARMS = ("truth", "flawed")

# metric -> +1 when the truth arm should score higher, -1 when lower; every downstream metric the bake-off
# reports (vital.bakeoff.downstream), so none is read without its control
CONTROL_METRICS = {
    "closed_accuracy": 1,
    "closed_discrimination": 1,
    "closed_accuracy_legacy": 1,
    "open_recall": 1,
    "yes_no_likelihood_accuracy": 1,
    "hallucination_claim_rate": -1,
}
# besides these, each metric of vital.vqa.metrics.KIND_METRICS per question kind (open_recall_modality, ...):
# higher is better


def control_metrics(runs: dict[str, dict[int, dict[str, Any]]]) -> dict[str, int]:
    """CONTROL_METRICS and the per-kind metrics the truth arm's runs hold, with their direction."""
    from vital.vqa.metrics import KIND_METRICS

    kinds = sorted(
        {
            k
            for v in runs.get("truth", {}).values()
            for k in v
            if k not in CONTROL_METRICS and k.startswith(tuple(f"{m}_" for m in KIND_METRICS))
        }
    )
    return {**CONTROL_METRICS, **dict.fromkeys(kinds, 1)}


# two-sided 95% Student t quantiles by degrees of freedom; the normal's beyond
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def no_arms(records: list[dict], paths: Paths, seed: int) -> dict[str, list[dict]]:
    raise ParamsError(
        "bakeoff.control=none: the positive control writes conversations from the demo world's hidden truth, "
        "which this profile does not have (run bakeoff_tune and bakeoff_evaluate alone, or set world)"
    )


# bakeoff.control: who writes the two arms' conversations (vital.registry)
CONTROL_WRITERS: dict[str, Backend] = {
    "world": Backend("vital.demo.positive_control:arms_from_truth", reads=("data/corpus/truth.jsonl",)),
    "none": Backend("vital.bakeoff.control:no_arms"),
}


def control_dir(paths: Paths) -> Path:
    return paths.artifacts / "control"


def model_dir(paths: Paths, arm: str, seed: int) -> Path:
    return paths.root / "models" / "control" / f"{arm}-s{seed}"


def domain_balanced(records: list[dict], n: int) -> list[dict]:
    """``n`` records taken from each domain in turn, in sample order within a domain. The sample lists its
    figures domain by domain, so its first ``n`` would hold only the first domains (480 of the demo's:
    chest X-rays and CTs alone), and a model tuned on them is asked about modalities it never saw."""
    by_domain: dict[tuple, list[dict]] = {}
    for rec in records:
        key = tuple(sorted(k for k, on in (rec.get("domain") or {}).items() if on))
        by_domain.setdefault(key, []).append(rec)
    queues = [list(reversed(group)) for group in by_domain.values()]
    picked: list[dict] = []
    while len(picked) < n and any(queues):
        for queue in queues:
            if queue and len(picked) < n:
                picked.append(queue.pop())
    return picked


def data_stage(p: Params, paths: Paths) -> dict[str, Any]:
    """``artifacts/control/<arm>.json`` for both arms, on ``bakeoff.control_figures`` sampled figures drawn
    from every domain in turn (:func:`domain_balanced`)."""
    write_arms = choose(CONTROL_WRITERS, p.bakeoff.control, "bakeoff.control").load()
    records = domain_balanced(list(read_jsonl(paths.sample)), p.bakeoff.control_figures)
    out = control_dir(paths)
    counts = {}
    for arm, convs in write_arms(records, paths, p.bakeoff.seeds[0]).items():
        write_json(out / f"{arm}.json", convs)
        counts[arm] = len(convs)
    return {"figures": len(records), "conversations": counts}


def tune_stage(p: Params, paths: Paths, arm: str, seed: int) -> dict[str, Any]:
    """``models/control/<arm>-s<seed>``: the base tuned on one arm with the tune section's budget."""
    if arm not in ARMS:  # before the ML libraries load: a wrong option fails in a second
        raise ParamsError(f"control_tune --arm {arm!r}: expected one of {', '.join(ARMS)}")
    from vital.llava import tune

    tp = p.tune.model_copy(update={"seed": seed})
    name = f"{arm}-s{seed}"
    return tune.run(
        base=tp.base,
        data=control_dir(paths) / f"{arm}.json",
        image_root=paths.corpus,
        out=model_dir(paths, arm, seed),
        tp=tp,
        checkpoint_dir=paths.root / ".vital" / "checkpoints" / "control" / name,
        curve_path=paths.plots / "control_tune" / f"{name}.csv",
    )


def evaluate_model(p: Params, paths: Paths, model: str | Path, name: str) -> dict[str, Any]:
    """Closed accuracy (corrected and legacy), open recall and the yes/no likelihood accuracy (the bake-off's,
    not LLaVA-Med's) on every evaluate set, and the hallucination rate of its descriptions of the world's
    held-out VQA figures: ``{set: {metric: value}}``."""
    from vital.evaluate import HALLUCINATION_BACKENDS, _load_named_sets
    from vital.llava.inference import LlavaAnswerer, likelihood_closed_accuracy
    from vital.registry import choose
    from vital.vqa.metrics import by_kind, summarize

    ev = p.evaluate
    answerer = LlavaAnswerer(model, device=ev.device, dtype=ev.dtype)
    out: dict[str, Any] = {}
    for s in _load_named_sets(p, paths):
        summary = summarize(
            s.items, answerer.answer(s.items, ev.batch_size, ev.max_new_tokens, f"{name}/{s.name}")
        )
        out[s.name] = {
            k: summary[k]
            for k in ("closed_accuracy", "closed_accuracy_legacy", "closed_discrimination", "open_recall")
            if k in summary
        }
        out[s.name].update(by_kind(summary))
        lik = likelihood_closed_accuracy(s.items, answerer.yes_no_logprobs(s.items, ev.batch_size))
        if lik["accuracy"] is not None:
            out[s.name]["yes_no_likelihood_accuracy"] = lik["accuracy"]
    hallucination = choose(HALLUCINATION_BACKENDS, ev.hallucination, "evaluate.hallucination").load()
    rates = hallucination(p, paths, answerer, name)
    if rates is not None:
        for block in out.values():
            block["hallucination_claim_rate"] = rates["claim_rate"]
            block["hallucination_answer_rate"] = rates["answer_rate"]
    return out


def difference(truth_runs: dict[int, float], flawed_runs: dict[int, float], direction: int) -> dict[str, Any]:
    """truth - flawed per seed: mean, sample std, 95% t-interval, and whether it separates the arms the
    right way (interval entirely above 0, or below 0 for a lower-is-better metric)."""
    seeds = sorted(s for s in truth_runs if s in flawed_runs)
    diffs = [truth_runs[s] - flawed_runs[s] for s in seeds]
    n = len(diffs)
    mean = statistics.fmean(diffs) if diffs else math.nan
    std = statistics.stdev(diffs) if n > 1 else math.nan
    ci = None
    if n > 1:
        half = _T95.get(n - 1, 1.96) * std / math.sqrt(n)
        ci = [round(mean - half, 4), round(mean + half, 4)]
    power = ci is not None and (ci[0] > 0 if direction > 0 else ci[1] < 0)
    return {
        "mean": round(mean, 4),
        "std": round(std, 4) if n > 1 else None,
        "n": n,
        "ci95": ci,
        "per_seed": [round(d, 4) for d in diffs],
        "higher_is_better": direction > 0,
        "has_power": power,
    }


def evaluate_stage(p: Params, paths: Paths) -> dict[str, Any]:
    """The record (evidence ``metrics/detail/control_evaluate.json``): per set and metric, each arm over seeds
    and truth - flawed with its interval and ``has_power``."""
    per: dict[str, dict[str, dict[int, dict[str, float]]]] = {}
    for arm in ARMS:
        for seed in p.bakeoff.seeds:
            for set_name, m in evaluate_model(
                p, paths, model_dir(paths, arm, seed), f"{arm}-s{seed}"
            ).items():
                per.setdefault(set_name, {}).setdefault(arm, {})[seed] = m
    out: dict[str, Any] = {"seeds": p.bakeoff.seeds, "figures": p.bakeoff.control_figures}
    for set_name, arms in per.items():
        block: dict[str, Any] = {"per_seed": arms, "truth_minus_flawed": {}}
        for metric, direction in control_metrics(arms).items():
            runs = {
                a: {s: v[metric] for s, v in arms.get(a, {}).items() if v.get(metric) is not None}
                for a in ARMS
            }
            if runs["truth"] and runs["flawed"]:
                block["truth_minus_flawed"][metric] = difference(runs["truth"], runs["flawed"], direction)
        block["no_power"] = sorted(m for m, d in block["truth_minus_flawed"].items() if not d["has_power"])
        out[set_name] = block
    return out


def headline(detail: dict) -> dict:
    """truth - flawed on the demo set, per metric that gates a claim (CONTROL_METRICS and the per-kind ones
    the evaluate stage compares): the positive control's mean difference. Every other kind stays in the
    evidence file."""
    from vital.evaluate import CLAIM_METRICS

    block = detail.get("demo") or next((v for v in detail.values() if isinstance(v, dict)), {})
    diffs = block.get("truth_minus_flawed") or {}
    gating = set(CONTROL_METRICS) | set(CLAIM_METRICS)
    return {f"{m}_truth_minus_flawed": d.get("mean") for m, d in diffs.items() if m in gating}


def control_models(p: Params, root: Path) -> list[str]:
    """What control_evaluate reads: every control model."""
    return [f"models/control/{a}-s{s}" for a in ARMS for s in p.bakeoff.seeds]
