"""The downstream instrument's positive control: truth-written vs flawed conversations, truth - flawed."""

from __future__ import annotations

import pytest

from vital.bakeoff.control import CONTROL_METRICS, control_metrics, data_stage, difference
from vital.bakeoff.downstream import MEASURES
from vital.demo.claims import check_claims, extract_claims
from vital.io import read_json, write_jsonl
from vital.params import parse_params
from vital.paths import Paths

TRUTH = {
    f"F{i}": {
        "pair_id": f"F{i}",
        "domain": d,
        "modality": m,
        "lesion": lesion,
        "side": "left" if lesion and i % 2 else "right" if lesion else None,
        "count": (1 + i % 3) if lesion else 0,
        "size": "small" if i % 2 else "large" if lesion else None,
        "image": f"images/{d}/F{i}.png",
    }
    for i, (d, m, lesion) in enumerate(
        [("ct_scan", "ct", True), ("mri", "mri", True), ("histology", "histology", False)] * 8
    )
}


def _claims(conv: list[dict], truth: dict) -> tuple[int, int]:
    ok = checked = 0
    for turn in conv:
        if turn["from"] == "gpt":
            a, b = check_claims(extract_claims(turn["value"]), truth)
            ok, checked = ok + a, checked + b
    return ok, checked


def test_the_arms_differ_only_in_what_the_answers_assert(tmp_path):
    paths = Paths(tmp_path)
    write_jsonl(paths.truth, list(TRUTH.values()))
    write_jsonl(paths.sample, [{"pair_id": k, "image": v["image"]} for k, v in TRUTH.items()])
    p = parse_params({"bakeoff": {"control_figures": 20}})
    assert data_stage(p, paths) == {"figures": 20, "conversations": {"truth": 20, "flawed": 20}}
    truth_arm = read_json(tmp_path / "artifacts/control/truth.json")
    flawed_arm = read_json(tmp_path / "artifacts/control/flawed.json")
    assert (
        [r["image"] for r in truth_arm]
        == [r["image"] for r in flawed_arm]
        == [TRUTH[f"F{i}"]["image"] for i in range(20)]
    )
    wrong_flawed = 0
    for t, f in zip(truth_arm, flawed_arm, strict=True):
        findings = TRUTH[t["id"].split("#")[0]]
        ok, checked = _claims(t["conversations"], findings)
        assert checked > 0 and ok == checked  # written from the truth: every claim holds
        ok, checked = _claims(f["conversations"], findings)
        wrong_flawed += ok < checked
        assert len(t["conversations"]) == len(f["conversations"])  # the same rounds per figure
        assert t["conversations"][0]["value"].startswith("<image>\n")
    assert wrong_flawed >= 18  # one planted error per conversation, asked first (a rare one goes unchecked)
    again = data_stage(p, paths)
    assert again == {"figures": 20, "conversations": {"truth": 20, "flawed": 20}}
    assert read_json(tmp_path / "artifacts/control/flawed.json") == flawed_arm  # deterministic


def test_the_control_figures_come_from_every_domain_of_a_sample_listed_domain_by_domain(tmp_path):
    # the sample stage writes its figures domain by domain: its first 480 in the demo were chest X-rays and
    # CTs only, so the control's models were asked to describe MRIs, histology and gross specimens unseen
    paths = Paths(tmp_path)
    write_jsonl(paths.truth, list(TRUTH.values()))
    grouped = sorted(TRUTH.values(), key=lambda t: t["domain"])
    write_jsonl(
        paths.sample,
        [{"pair_id": t["pair_id"], "image": t["image"], "domain": {t["domain"]: True}} for t in grouped],
    )
    data_stage(parse_params({"bakeoff": {"control_figures": 9}}), paths)
    ids = [r["id"].split("#")[0] for r in read_json(tmp_path / "artifacts/control/truth.json")]
    domains = [TRUTH[i]["domain"] for i in ids]
    assert sorted(domains) == ["ct_scan"] * 3 + ["histology"] * 3 + ["mri"] * 3
    by_domain = {d: [i for i in ids if TRUTH[i]["domain"] == d] for d in set(domains)}
    for d, picked in by_domain.items():  # the sample's own order within a domain
        assert picked == [t["pair_id"] for t in grouped if t["domain"] == d][:3]


def test_every_downstream_measure_of_the_bakeoff_has_its_control():
    # a measure without a control is never listed under no_power, so vital.results would read claims off it
    assert set(MEASURES) <= set(CONTROL_METRICS)
    assert CONTROL_METRICS["hallucination_claim_rate"] == -1  # lower is better
    assert all(CONTROL_METRICS[m] == 1 for m in MEASURES if m != "hallucination_claim_rate")


def test_every_per_kind_metric_the_runs_hold_gets_its_control_higher_is_better():
    runs = {
        "truth": {0: {"open_recall": 0.5, "open_recall_modality": 1.0, "closed_discrimination_side": 0.1}},
        "flawed": {0: {"open_recall": 0.4, "open_recall_modality": 0.5}},
    }
    got = control_metrics(runs)
    assert got["open_recall_modality"] == 1 and got["closed_discrimination_side"] == 1
    assert got["hallucination_claim_rate"] == -1 and "open_recall" in got
    # the bake-off reports the same per-kind metrics (vital.bakeoff.downstream), so none is read without its control
    from vital.evaluate import CLAIM_METRICS
    from vital.results import DOWNSTREAM_METRICS

    # every metric a top - random or a downstream verdict is given on has its control, overall or per kind
    claimed = set(DOWNSTREAM_METRICS) | set(CLAIM_METRICS)
    kinds = [m for m in claimed if m not in CONTROL_METRICS]
    assert kinds and all(m.startswith(("open_recall_", "closed_discrimination_")) for m in kinds)


def test_truth_minus_flawed_has_power_only_when_its_interval_excludes_zero_the_right_way():
    sep = difference({0: 0.60, 1: 0.62, 2: 0.58}, {0: 0.50, 1: 0.52, 2: 0.49}, direction=1)
    assert sep["mean"] == pytest.approx(0.0967, abs=1e-4) and sep["n"] == 3
    # t(2) = 4.303: 0.0967 +- 4.303 * 0.00577 / sqrt(3)
    assert sep["ci95"] == pytest.approx([0.0823, 0.1110], abs=1e-4) and sep["has_power"]
    noisy = difference({0: 0.6, 1: 0.4, 2: 0.55}, {0: 0.5, 1: 0.5, 2: 0.5}, direction=1)
    assert noisy["ci95"][0] < 0 < noisy["ci95"][1] and not noisy["has_power"]
    # lower is better (a hallucination rate): power when the whole interval is below 0
    assert difference({0: 0.10, 1: 0.12, 2: 0.11}, {0: 0.30, 1: 0.25, 2: 0.28}, direction=-1)["has_power"]
    wrong_way = difference({0: 0.60, 1: 0.62, 2: 0.58}, {0: 0.50, 1: 0.52, 2: 0.49}, direction=-1)
    assert not wrong_way["has_power"]  # separated, but the truth arm hallucinating more is no power
    one = difference({0: 0.6}, {0: 0.5}, direction=1)
    assert one["ci95"] is None and not one["has_power"]
