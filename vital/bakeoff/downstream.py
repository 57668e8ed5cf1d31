"""The bakeoff downstream (``bakeoff/dvc.yaml``): tune the base on each method's subset, evaluate, compare.

``bakeoff_tune`` (a matrix over ``bakeoff.downstream_methods`` x ``bakeoff.seeds``) tunes ``tune.base`` on
``artifacts/bakeoff/<method>-<downstream_keep>.json`` (random: the seed's own random subset) with the tune
section's budget and that seed, into ``models/bakeoff/<method>-s<seed>``. ``bakeoff_evaluate`` asks every
such model the ``evaluate.sets`` questions zero-shot and reports closed-set accuracy (corrected and
LLaVA-Med's legacy figure), open-set recall, the yes/no likelihood accuracy (NOT LLaVA-Med's metric,
:func:`vital.llava.inference.likelihood_closed_accuracy`) and, on the demo world, the hallucination rate of
its descriptions of the held-out figures (``evaluate.hallucination``), each over seeds and minus random;
open recall and closed discrimination per question kind too (``open_recall_modality``, ...), since the
demo's positive control finds power in the modality questions alone (``control_evaluate``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from vital.bakeoff.methods import METHODS
from vital.bakeoff.stage import subset_name
from vital.evaluate import HALLUCINATION_BACKENDS, _load_named_sets, seed_difference, summarize_seeds
from vital.io import write_csv
from vital.params import Params, ParamsError
from vital.paths import Paths
from vital.registry import choose
from vital.vqa.metrics import KIND_METRICS, by_kind, summarize

MEASURES = (
    "closed_accuracy",
    "closed_accuracy_legacy",
    "open_recall",
    "yes_no_likelihood_accuracy",
    "hallucination_claim_rate",  # lower is better (evaluate.hallucination; vital/vqa/hallucination.py)
)


def subset_file(p: Params, paths: Paths, method: str, seed: int) -> Path:
    """The method's subset at ``downstream_keep`` for the tune at ``seed``: random's own draw, the selector's
    subset trained at that seed (when select trained fewer seeds: the one at the same position, cycling)."""
    keep = p.bakeoff.downstream_keep
    if method == "random":
        return paths.bakeoff / f"{subset_name(method, keep, seed)}.json"
    if METHODS[method].seeds is None:
        return paths.bakeoff / f"{subset_name(method, keep)}.json"
    own = paths.bakeoff / f"{subset_name(method, keep, seed)}.json"
    if own.is_file():
        return own
    if (one := paths.bakeoff / f"{subset_name(method, keep)}.json").is_file():
        return one  # trained at one seed
    pattern = re.compile(rf"{re.escape(method)}-s(\d+)-{keep}\.json")
    trained = sorted(
        int(m.group(1)) for f in paths.bakeoff.glob("*.json") if (m := pattern.fullmatch(f.name))
    )
    if not trained:
        return own  # tune names the missing file
    position = p.bakeoff.seeds.index(seed) if seed in p.bakeoff.seeds else 0
    return paths.bakeoff / f"{subset_name(method, keep, trained[position % len(trained)])}.json"


def model_dir(paths: Paths, method: str, seed: int) -> Path:
    return paths.root / "models" / "bakeoff" / f"{method}-s{seed}"


def tune_stage(p: Params, paths: Paths, method: str, seed: int) -> dict[str, Any]:
    """``models/bakeoff/<method>-s<seed>``: the base tuned on the method's subset, tune's budget."""
    if method not in p.bakeoff.downstream_methods:  # before the ML libraries load
        raise ParamsError(
            f"bakeoff_tune --method {method!r} is not one of bakeoff.downstream_methods {p.bakeoff.downstream_methods}"
        )
    from vital.llava import tune

    tp = p.tune.model_copy(update={"seed": seed})
    name = f"{method}-s{seed}"
    return tune.run(
        base=tp.base,
        data=subset_file(p, paths, method, seed),
        image_root=paths.corpus,
        out=model_dir(paths, method, seed),
        tp=tp,
        checkpoint_dir=paths.root / ".vital" / "checkpoints" / "bakeoff" / name,
        curve_path=paths.plots / "bakeoff_tune" / f"{name}.csv",
    )


def evaluate_stage(p: Params, paths: Paths) -> dict[str, Any]:
    """The record (evidence ``metrics/detail/bakeoff_evaluate.json``) and ``metrics/plots/bakeoff_downstream.csv``."""
    from vital.llava.inference import LlavaAnswerer, likelihood_closed_accuracy

    bp, ev = p.bakeoff, p.evaluate
    sets = _load_named_sets(p, paths)
    hallucination = choose(HALLUCINATION_BACKENDS, ev.hallucination, "evaluate.hallucination").load()
    per: dict[str, dict[str, dict[int, dict[str, Any]]]] = {s.name: {} for s in sets}
    for method in bp.downstream_methods:
        for seed in bp.seeds:
            model = LlavaAnswerer(model_dir(paths, method, seed), device=ev.device, dtype=ev.dtype)
            rates = hallucination(p, paths, model, f"{method}-s{seed}")
            for s in sets:
                preds = model.answer(s.items, ev.batch_size, ev.max_new_tokens, f"{method}-s{seed}/{s.name}")
                full = summarize(s.items, preds, by=("question_type",))
                summary = {k: v for k, v in full.items() if not isinstance(v, dict)} | by_kind(full)
                lik = likelihood_closed_accuracy(s.items, model.yes_no_logprobs(s.items, ev.batch_size))
                summary["yes_no_likelihood_accuracy"] = lik["accuracy"]
                if rates is not None:
                    summary["hallucination_claim_rate"] = rates["claim_rate"]
                per[s.name].setdefault(method, {})[seed] = summary
            del model
    out: dict[str, Any] = {
        "keep": bp.downstream_keep,
        "seeds": bp.seeds,
        "note": "yes_no_likelihood_accuracy is NOT LLaVA-Med's metric: it compares the model's likelihood of "
        "'yes' and 'no' instead of reading its generated answer",
    }
    for s in sets:
        row: dict[str, Any] = {}
        for method, by_seed in per[s.name].items():
            row[method] = {"over_seeds": summarize_seeds(by_seed), "per_seed": by_seed}
            if method != "random" and "random" in per[s.name]:
                row[method]["minus_random"] = {
                    m: seed_difference(by_seed, per[s.name]["random"], m)
                    for m in (*MEASURES, *_kind_measures(by_seed))
                    if any(isinstance(r.get(m), int | float) for r in by_seed.values())
                }
        out[s.name] = row
    _write_plot(paths.plots / "bakeoff_downstream.csv", out, [s.name for s in sets])
    return out


def _kind_measures(by_seed: dict[int, dict[str, Any]]) -> list[str]:
    """The per-question-kind metrics the runs hold (``open_recall_modality``, ...; vital.vqa.metrics.by_kind)."""
    prefixes = tuple(f"{m}_" for m in KIND_METRICS)
    return sorted({k for r in by_seed.values() for k in r if k.startswith(prefixes) and k not in MEASURES})


def _write_plot(path: Path, out: dict[str, Any], sets: list[str]) -> None:
    rows = (
        [s, method, *(entry["over_seeds"].get(m, {}).get("mean", "") for m in MEASURES)]
        for s in sets
        for method, entry in out[s].items()
    )
    write_csv(path, ["set", "method", *MEASURES], rows)


def downstream_models(p: Params, root: Path) -> list[str]:
    """What bakeoff_evaluate reads: every tuned model of the matrix."""
    return [f"models/bakeoff/{m}-s{s}" for m in p.bakeoff.downstream_methods for s in p.bakeoff.seeds]


def headline(detail: dict) -> dict:
    """Per set: each method's closed accuracy minus random's, mean over seeds."""
    return {
        set_name: {
            method: ((m.get("minus_random") or {}).get("closed_accuracy") or {}).get("mean")
            for method, m in block.items()
            if isinstance(m, dict) and "minus_random" in m
        }
        for set_name, block in detail.items()
        if isinstance(block, dict)
        and any(isinstance(m, dict) and "minus_random" in m for m in block.values())
    }
