"""The evaluate stage: answer every evaluation set with every model and score the answers.

``metrics/evaluate.json`` is shaped for ``dvc metrics diff``::

    {"<set>": {"<model>": {"closed_accuracy": ..., "closed_accuracy_legacy": ..., "open_recall": ...,
                           "n_closed": ..., "n_open": ..., "by_domain": {...}},
               "chance": {"closed_chance": 0.5, "closed_majority": ...},
               "data": {"n_items": ..., "dropped": ..., "dropped_examples": [...], "filtered": {...}}},
     "_stage": {"models": {"<model>": "<dir or hub id>"}}}

Predictions go to ``artifacts/predictions/<model>/<set>.jsonl`` (LLaVA-Med answer-file fields plus
the reference and per-question scores). :func:`evaluate_models` takes any ``{name: model dir}``, so
seeds and selection-vs-random tunes are evaluated the same way; :func:`summarize_seeds` and
:func:`seed_difference` turn several such results into mean and spread.
"""

from __future__ import annotations

import gc
import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from vital.backends import Backend
from vital.io import write_jsonl
from vital.params import EvaluateParams, Params
from vital.paths import Paths, is_local, repo_relative
from vital.registry import choose
from vital.vqa.items import LoadedSet, VQAItem
from vital.vqa.loaders import read_sets, set_files
from vital.vqa.metrics import by_kind, closed_baselines, score_item, summarize

RESERVED = (
    "chance",
    "data",
    "base_over_seeds",
    "top_over_seeds",
    "random_over_seeds",
    "top_minus_random",
    "top_minus_base",
    "random_minus_base",
    "_hallucination",
)


def no_hallucination(
    params: Params, paths: Paths, answerer, name: str = "", rows_path: Path | None = None
) -> None:
    """``evaluate.hallucination: none``: no figure's findings are known, so no description is checked."""
    return None


# evaluate.hallucination: who checks the claims of a model's figure descriptions (vital.registry)
HALLUCINATION_BACKENDS: dict[str, Backend] = {
    "world": Backend("vital.vqa.hallucination:world_hallucination", reads=("data/vqa/demo",)),
    "none": Backend("vital.evaluate:no_hallucination"),
}


class Answerer(Protocol):
    model_id: str

    def answer(
        self, items: Sequence[VQAItem], batch_size: int, max_new_tokens: int, desc: str
    ) -> list[str]: ...


AnswererFactory = Callable[[str | Path], Answerer]


def _llava_factory(device: str, dtype: str) -> AnswererFactory:
    from vital.llava.inference import LlavaAnswerer  # torch/transformers only when a model is run

    return lambda model: LlavaAnswerer(model, device=device, dtype=dtype)


# ------------------------------------------------------------------ inputs
def load_sets(ev: EvaluateParams, root: Path) -> list[LoadedSet]:
    """Every set in ``evaluate.sets``; paths are relative to ``root`` unless absolute."""
    return read_sets(ev.sets, root, ev.max_invalid_fraction)


def resolve_model(name: str, spec: str, root: Path) -> str | Path:
    """A local checkpoint directory under ``root``, or a hub id (``owner/name``) passed through."""
    local = root / spec
    if not is_local(spec, root):
        return spec
    if not (local / "config.json").is_file():
        raise FileNotFoundError(f"evaluate.models.{name}: {local} is not a model checkpoint (no config.json)")
    return local


# ------------------------------------------------------------------ evaluation
def _prediction_rows(items: Sequence[VQAItem], preds: Sequence[str], model_id: str) -> list[dict[str, Any]]:
    return [
        {
            "question_id": item.question_id,
            "prompt": item.question,
            "text": pred,
            "answer": item.answer,
            "answer_type": item.answer_type,
            "domain": item.domain,
            "question_type": item.question_type,
            "model_id": model_id,
            "scores": score_item(item, pred),
        }
        for item, pred in zip(items, preds, strict=True)
    ]


def evaluate_models(
    model_dirs: Mapping[str, str | Path],
    sets: Sequence[LoadedSet],
    predictions_dir: Path | None = None,
    batch_size: int = 32,
    max_new_tokens: int = 16,
    device: str = "auto",
    dtype: str = "auto",
    answerer: AnswererFactory | None = None,
    describe: Callable[[Answerer, str], dict | None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Answer and score every set with every model: ``{set: {model: summary, "chance", "data"}}``; with
    ``describe`` (model, name) -> hallucination rates, also ``{"_hallucination": {model: rates}}`` (not a set: readers skip ``_`` keys).

    Models are loaded one at a time and released before the next, so a 13B tuned model and its
    base never share the accelerator.
    """
    clash = sorted(set(model_dirs) & set(RESERVED))
    if clash:
        raise ValueError(f"model names {clash} are reserved in metrics/evaluate.json (use other names)")
    factory = answerer or _llava_factory(device, dtype)
    results: dict[str, dict[str, Any]] = {
        s.name: {"chance": closed_baselines(s.items), "data": s.report()} for s in sets
    }
    for name, model_dir in model_dirs.items():
        model = factory(model_dir)
        for s in sets:
            preds = model.answer(s.items, batch_size, max_new_tokens, f"{name}/{s.name}")
            if predictions_dir is not None:
                write_jsonl(
                    Path(predictions_dir) / name / f"{s.name}.jsonl",
                    _prediction_rows(s.items, preds, str(model.model_id)),
                )
            summary = summarize(s.items, preds)
            results[s.name][name] = summary | by_kind(summary)
        rates = describe(model, name) if describe is not None else None
        if rates is not None:
            results.setdefault("_hallucination", {})[name] = rates
        del model
        _release_memory()
    return results


def _release_memory() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass


def run(params: Params, paths: Paths, answerer: AnswererFactory | None = None) -> dict:
    """The evaluate stage: all ``evaluate.models`` on all ``evaluate.sets``; writes metrics/evaluate.json."""
    ev = params.evaluate
    specs = {**ev.models, **tuned_models(params)}
    models = {name: resolve_model(name, spec, paths.root) for name, spec in specs.items()}
    sets = _load_named_sets(params, paths)

    hallucination = choose(HALLUCINATION_BACKENDS, ev.hallucination, "evaluate.hallucination").load()

    def describe(model: Answerer, name: str) -> dict | None:
        return hallucination(params, paths, model, name, paths.predictions / name / "hallucination.jsonl")

    results: dict[str, Any] = _evaluate(models, sets, paths.predictions, ev, answerer, describe)
    for set_name in [s.name for s in sets]:
        results[set_name].update(compare_subsets(results[set_name], params.tune.subsets, params.tune.seeds))
    if "_hallucination" in results:
        results["_hallucination"].update(
            compare_subsets(results["_hallucination"], params.tune.subsets, params.tune.seeds, HALLUCINATION)
        )
    results["_stage"] = {
        "models": {k: str(v) for k, v in specs.items()},
        "sets": {s.name: {"format": s.format, "path": str(s.path)} for s in sets},
    }
    return results


def run_finetuned(params: Params, paths: Paths, answerer: AnswererFactory | None = None) -> dict:
    """The evaluate_finetuned stage: every model the finetune stages fine-tuned on a set's train split,
    scored on that set's test split (LLaVA-Med's VQA protocol); writes metrics/evaluate_finetuned.json."""
    ev = params.evaluate
    tuned_on = {f.name for f in params.finetune.sets}
    specs = finetuned_models(params)
    sets = [s for s in _load_named_sets(params, paths) if s.name in tuned_on]
    missing = [
        paths.root / spec / s.name
        for s in sets
        for spec in specs.values()
        if not (paths.root / spec / s.name / "config.json").is_file()
    ]
    if missing:  # before any model answers anything
        raise FileNotFoundError(
            f"{missing[0]}: no fine-tuned checkpoint (and {len(missing) - 1} more); finetune.sets names the set: "
            "run `dvc repro finetune finetune_base`"
        )
    results: dict[str, Any] = {}
    for s in sets:
        models = {name: paths.root / spec / s.name for name, spec in specs.items()}
        block = _evaluate(models, [s], paths.predictions_finetuned, ev, answerer)[s.name]
        block.update(compare_subsets(block, ["base", *params.tune.subsets], params.tune.seeds))
        results[s.name] = block
    results["_stage"] = {
        "models": {k: f"{v}/<set>" for k, v in specs.items()},
        "sets": {s.name: {"format": s.format, "path": str(s.path)} for s in sets},
    }
    return results


def _evaluate(
    models: Mapping[str, str | Path],
    sets: Sequence[LoadedSet],
    predictions_dir: Path,
    ev: EvaluateParams,
    answerer: AnswererFactory | None,
    describe: Callable[[Answerer, str], dict | None] | None = None,
) -> dict[str, Any]:
    return evaluate_models(
        models,
        sets,
        predictions_dir=predictions_dir,
        batch_size=ev.batch_size,
        max_new_tokens=ev.max_new_tokens,
        device=ev.device,
        dtype=ev.dtype,
        answerer=answerer,
        describe=describe,
    )


def _load_named_sets(params: Params, paths: Paths) -> list[LoadedSet]:
    sets = load_sets(params.evaluate, paths.root)
    # "hallucination": its predictions file would be the descriptions' (predictions/<model>/hallucination.jsonl)
    clash = sorted({s.name for s in sets} & {"_stage", "_hallucination", "hallucination"})
    if clash:
        raise ValueError(f"evaluate.sets: set name {clash[0]!r} is reserved")
    return sets


# ------------------------------------------------------------------ several seeds
# (per kind: the modality questions, on which the demo's positive control has power; docs/tuning.md)
CLAIM_METRICS = (
    "closed_accuracy",
    "closed_discrimination",
    "open_recall",
    "open_recall_modality",
    "closed_discrimination_modality",
)
# metrics/evaluate.json's "_hallucination" block: lower is better (vital.vqa.hallucination)
HALLUCINATION = ("claim_rate", "answer_rate")


def tuned_models(params: Params) -> dict[str, str]:
    """The tune stage's matrix: ``<subset>-s<seed>`` -> ``models/tuned/<subset>-s<seed>``."""
    return {name: f"models/tuned/{name}" for name in params.tune.model_names()}


def finetuned_models(params: Params) -> dict[str, str]:
    """The finetune stages' outputs: ``base-s<seed>`` and every tuned model -> ``models/finetuned/<name>``."""
    if not params.finetune.sets:
        return {}
    names = [f"base-s{seed}" for seed in params.tune.seeds] + list(tuned_models(params))
    return {name: f"models/finetuned/{name}" for name in names}


GAINS = (("top", "random"), ("top", "base"), ("random", "base"))


def compare_subsets(
    per_model: Mapping[str, Any],
    subsets: Sequence[str],
    seeds: Sequence[int],
    metrics: Sequence[str] = CLAIM_METRICS,
) -> dict:
    """Mean and spread over seeds per subset, and the per-seed gains (``top`` over ``random``; over
    ``base`` where the base was run once per seed too, as the finetune control is)."""
    runs = {
        subset: {seed: per_model[f"{subset}-s{seed}"] for seed in seeds if f"{subset}-s{seed}" in per_model}
        for subset in subsets
    }
    out: dict[str, Any] = {
        f"{subset}_over_seeds": {k: v for k, v in summarize_seeds(r).items() if k in metrics}
        for subset, r in runs.items()
        if r
    }
    for a, b in GAINS:
        if runs.get(a) and runs.get(b):
            out[f"{a}_minus_{b}"] = {
                key: seed_difference(runs[a], runs[b], key)
                for key in metrics
                if any(_is_number(r.get(key)) for r in runs[a].values())
            }
    return out


def _spread(values: list[float]) -> dict[str, float | int]:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def summarize_seeds(per_seed: Mapping[Any, Mapping[str, Any]]) -> dict[str, Any]:
    """Mean, sample std, min, max and n of every numeric entry across seeds, nesting kept.

    ``per_seed`` maps a seed (or run name) to one summary, e.g. ``results["demo"]["topk"]`` of each
    seed's :func:`evaluate_models`. An entry missing from some seeds is summarised over the others.
    """
    if not per_seed:
        raise ValueError("summarize_seeds: no seeds given")
    runs = list(per_seed.values())
    keys = list(dict.fromkeys(k for r in runs for k in r))
    out: dict[str, Any] = {}
    for key in keys:
        present = [r[key] for r in runs if key in r]
        if all(isinstance(v, Mapping) for v in present):
            out[key] = summarize_seeds(dict(enumerate(present)))
        elif all(_is_number(v) for v in present):
            out[key] = _spread([float(v) for v in present])
    return out


def seed_difference(
    a: Mapping[Any, Mapping[str, Any]], b: Mapping[Any, Mapping[str, Any]], key: str
) -> dict[str, float | int]:
    """Per-seed ``a[key] - b[key]`` over the seeds both have: mean and spread, plus how often a wins."""
    seeds = [s for s in a if s in b and _is_number(a[s].get(key)) and _is_number(b[s].get(key))]
    if not seeds:
        raise ValueError(f"seed_difference: no seed has a numeric {key!r} in both runs")
    diffs = [float(a[s][key]) - float(b[s][key]) for s in seeds]
    return {**_spread(diffs), "wins": sum(d > 0 for d in diffs), "ties": sum(d == 0 for d in diffs)}


# ------------------------------------------------------------------ inputs named by params (vital.dag)
def eval_files(params: Params, root: Path) -> list[str]:
    """Question files and image folders of ``evaluate.sets``."""
    return [f for s in params.evaluate.sets for f in set_files(s, root)]


def extra_models(params: Params, root: Path) -> list[str]:
    """The local checkpoints among ``evaluate.models`` (hub ids are not files)."""
    return [repo_relative(spec, root) for spec in params.evaluate.models.values() if is_local(spec, root)]


def headline(detail: dict) -> dict:
    """Per set: closed accuracy and open recall of the tuned subsets (mean over seeds) and the base."""
    out: dict[str, Any] = {}
    for set_name, block in detail.items():
        if set_name == "_stage" or not isinstance(block, dict):
            continue
        for model in ("top", "random", "base"):
            m = block.get(f"{model}_over_seeds") or {}
            if m:
                numbers = {k: (m.get(k) or {}).get("mean") for k in ("closed_accuracy", "open_recall")}
            else:
                numbers = {k: (block.get(model) or {}).get(k) for k in ("closed_accuracy", "open_recall")}
            out.setdefault(set_name, {})[model] = numbers
    return out
