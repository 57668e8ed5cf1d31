"""A short, readable summary of a pipeline run, from the metrics files the stages wrote."""

from __future__ import annotations

import json
from pathlib import Path

from vital.paths import Paths


def _load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


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


def summary(paths: Paths) -> str:
    lines = []
    gen = _load(paths.metric("generate"))
    if gen:
        lines.append(
            f"generate  {gen.get('backend')}/{gen.get('model')}: {gen.get('candidates')} candidates, "
            f"{gen.get('candidates_failed', 0)} rejected {gen.get('failures_by_reason', {})}, "
            f"{gen.get('requests_sent', 0)} requests, ${gen.get('estimated_cost_usd', 0):.2f}"
        )
    held = _load(paths.metric("select")).get("heldout_human", {})
    if held:
        lines.append(f"select    agreement with {held.get('pairs')} held-out clinician pairs:")
        for who in ("selector", "judge", "random", "clinician_vs_clinician"):
            if isinstance(held.get(who), dict):
                lines.append(f"            {who:<24}{_fmt(held[who].get('agreement'))}")
        for key in ("selector_minus_judge", "selector_minus_weight0"):
            if isinstance(held.get(key), dict):
                d = held[key]
                lines.append(f"            {key:<24}{_fmt(d.get('difference'))}  95% CI {d.get('ci95')}")
    ev = _load(paths.metric("evaluate"))
    for set_name, res in ev.items():
        if set_name.startswith("_") or not isinstance(res, dict):
            continue
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
    for set_name, res in _load(paths.metric("evaluate_finetuned")).items():
        if set_name.startswith("_") or not isinstance(res, dict):
            continue
        lines.append(
            f"evaluate  {set_name}, each model fine-tuned on its train split (LLaVA-Med's protocol):"
        )
        lines += _model_lines(res)
        lines += _gain_lines(res)
    return "\n".join(lines) if lines else "no metrics yet: run `dvc repro`"
