"""sample stage: stratified, seeded, stable sampling; bad records counted and listed."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from vital import stats
from vital.io import RecordError, read_json, read_jsonl
from vital.params import ParamsError, SampleParams, parse_params
from vital.sample import run
from vital.schema import DOMAINS


def _record(i: int, domain: str = "ct_scan", **over) -> dict:
    rec = {
        "pair_id": f"PMC{1000 + i}_F1",
        "pmid": str(i),
        "fig_label": "Figure 1",
        "fig_caption": f"Axial CT image {i}.",
        "in_text_mention": [{"tokens": "see Figure 1"}],
        "domain": {d: d == domain for d in DOMAINS},
        "image": f"images/{domain}/PMC{1000 + i}_F1.png",
    }
    rec.update(over)
    return rec


def _corpus(root: Path, records: list, extra_lines: tuple[str, ...] = ()) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for r in records:
        if isinstance(r, dict) and isinstance(r.get("image"), str) and not r.get("_no_file"):
            (root / r["image"]).parent.mkdir(parents=True, exist_ok=True)
            (root / r["image"]).write_bytes(b"png")
    lines = [json.dumps({k: v for k, v in r.items() if k != "_no_file"}) for r in records]
    path = root / "figures.jsonl"
    path.write_text("\n".join([*lines, *extra_lines]) + "\n")
    return path


def _balanced(n_per_domain: int) -> list[dict]:
    return [_record(i * 10 + j, d) for i in range(n_per_domain) for j, d in enumerate(DOMAINS)]


def _run(tmp_path: Path, figures: Path, cfg: SampleParams, tag: str = "a") -> tuple[list[dict], dict]:
    out, metrics = tmp_path / tag / "sample.jsonl", tmp_path / tag / "sample.json"
    result = run(figures, out, metrics, cfg)
    assert read_json(metrics) == result
    return list(read_jsonl(out)), result


def test_stratified_and_reproducible(tmp_path):
    figures = _corpus(tmp_path / "corpus", _balanced(10))
    cfg = SampleParams(per_domain=4, seed=1)
    recs, result = _run(tmp_path, figures, cfg)
    assert result["sampled"] == 20 and result["read"] == 50 and result["dropped"] == 0
    assert all(result["per_domain"][d] == {"available": 10, "sampled": 4} for d in DOMAINS)
    again, _ = _run(tmp_path, figures, cfg, "b")
    assert again == recs
    assert (tmp_path / "a" / "sample.jsonl").read_bytes() == (tmp_path / "b" / "sample.jsonl").read_bytes()
    other, _ = _run(tmp_path, figures, SampleParams(per_domain=4, seed=2), "c")
    assert {r["pair_id"] for r in other} != {r["pair_id"] for r in recs}
    assert recs[0]["in_text_mention"] == [{"tokens": "see Figure 1"}]  # records pass through unchanged


def test_selection_is_stable_when_unselected_records_go(tmp_path):
    records = _balanced(10)
    cfg = SampleParams(per_domain=3)
    recs, _ = _run(tmp_path, _corpus(tmp_path / "full", records), cfg)
    chosen = {r["pair_id"] for r in recs}
    fewer = [r for i, r in enumerate(records) if r["pair_id"] in chosen or i % 2]
    recs2, _ = _run(tmp_path, _corpus(tmp_path / "fewer", fewer), cfg, "b")
    assert {r["pair_id"] for r in recs2} == chosen


def test_domain_subset_and_short_domains(tmp_path):
    records = _balanced(2) + [_record(900 + i, "mri") for i in range(5)]
    recs, result = _run(
        tmp_path, _corpus(tmp_path / "c", records), SampleParams(per_domain=4, domains=["mri", "gross"])
    )
    assert [r["domain"]["mri"] for r in recs] == [True] * 4 + [False] * 2
    assert result["short_domains"] == ["gross"]
    assert result["not_selected_domains"] == {"chest_xray": 2, "ct_scan": 2, "histology": 2}


def test_bad_records_are_counted_and_listed(tmp_path):
    good = _balanced(2)
    bad = [
        _record(500, fig_caption="   "),
        _record(501, domain="other"),
        {**_record(502), "_no_file": True},
        {"pmid": "1", "fig_caption": "x", "image": "a.png"},  # no pair_id
        good[0],  # duplicate pair_id
    ]
    figures = _corpus(tmp_path / "c", good + bad, extra_lines=("{not json", "[1, 2]"))
    recs, result = _run(tmp_path, figures, SampleParams(per_domain=5))
    assert len(recs) == 10
    assert result["dropped_by_reason"] == {
        "duplicate_pair_id": 1,
        "empty_caption": 1,
        "invalid_json": 1,
        "invalid_record": 2,
        "missing_image": 1,
        "unknown_domain": 1,
    }
    assert result["dropped"] == 7 and result["read"] == 17
    where = {p["reason"]: p["where"] for p in result["dropped_examples"]}
    assert where["invalid_json"] == f"{figures}:16"
    assert where["missing_image"] == f"{figures}:13"
    assert any(
        "pair_id" in p["detail"] for p in result["dropped_examples"] if p["reason"] == "invalid_record"
    )


def test_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="figures.jsonl"):
        run(tmp_path / "figures.jsonl", tmp_path / "o.jsonl", tmp_path / "m.json", SampleParams())
    figures = _corpus(tmp_path / "c", [_record(1, fig_caption="")])
    with pytest.raises(ValueError, match="no usable figures"):
        run(figures, tmp_path / "o.jsonl", tmp_path / "m.json", SampleParams())
    with pytest.raises(ParamsError, match="sample"):
        parse_params({"sample": {"domains": ["ct_scan", "xray"]}})


def test_stage_script_runs_from_a_project_root(tmp_path):
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    _corpus(tmp_path / "data" / "corpus", _balanced(3))
    (tmp_path / "params.yaml").write_text("sample:\n  per_domain: 2\n")
    env = {"PYTHONPATH": str(repo), "PATH": "/usr/bin:/bin", "VITAL_PROGRESS": "off"}
    proc = subprocess.run(
        [sys.executable, str(repo / "stages" / "sample.py")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert len(list(read_jsonl(tmp_path / "artifacts" / "sample.jsonl"))) == 10
    assert stats.read_headline(tmp_path, "sample") == {"sampled": 10}
    assert stats.detail(tmp_path, "sample")["sampled"] == 10


# ------------------------------------------------------------------ no usable record, duplicates, pmid
def test_no_usable_record_writes_metrics_then_names_lines(tmp_path):
    import subprocess
    import sys

    records = [
        _record(1, fig_caption=""),
        {**_record(2), "_no_file": True},
        _record(1),
    ]  # 3rd repeats the 1st
    figures = _corpus(tmp_path / "data" / "corpus", records, extra_lines=("{oops",))
    metrics = tmp_path / "m.json"
    with pytest.raises(RecordError) as e:
        run(figures, tmp_path / "o.jsonl", metrics, SampleParams())
    msg = str(e.value)
    assert "no usable figures" in msg and f"{figures}:1: empty_caption" in msg
    assert f"{figures}:3: duplicate_pair_id" in msg and f"{figures}:4: invalid_json" in msg
    result = read_json(metrics)
    assert result["sampled"] == 0 and result["read"] == 4
    assert result["dropped_by_reason"] == {
        "duplicate_pair_id": 1,
        "empty_caption": 1,
        "invalid_json": 1,
        "missing_image": 1,
    }
    assert not (tmp_path / "o.jsonl").exists()
    # the stage prints one line, not a traceback
    (tmp_path / "params.yaml").write_text("sample:\n  per_domain: 2\n")
    repo = Path(__file__).resolve().parents[1]
    env = {"PYTHONPATH": str(repo), "PATH": "/usr/bin:/bin", "VITAL_PROGRESS": "off"}
    proc = subprocess.run(
        [sys.executable, str(repo / "stages" / "sample.py")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "[sample] error:" in proc.stderr and "figures.jsonl:3: duplicate_pair_id" in proc.stderr


def test_records_without_pmid_are_usable(tmp_path):
    records = [{k: v for k, v in r.items() if k != "pmid"} for r in _balanced(2)]
    recs, result = _run(tmp_path, _corpus(tmp_path / "c", records), SampleParams(per_domain=2))
    assert result["sampled"] == 10 and result["dropped"] == 0 and recs[0]["pmid"] is None


def test_first_record_of_a_pair_id_wins_even_when_invalid_or_in_another_domain(tmp_path):
    records = _balanced(3)
    first_bad = _record(900, "mri", fig_caption="")
    again_good = _record(900, "mri")
    other_domain = _record(10, "gross")
    other_domain["pair_id"] = records[1]["pair_id"]  # a ct_scan figure's pair_id, here on a gross record
    figures = _corpus(tmp_path / "c", [*records, first_bad, again_good, other_domain])
    recs, result = _run(tmp_path, figures, SampleParams(per_domain=10))
    ids = [r["pair_id"] for r in recs]
    assert len(ids) == len(set(ids)) == 15 and "PMC1900_F1" not in ids
    assert result["dropped_by_reason"] == {"duplicate_pair_id": 2, "empty_caption": 1}
    dups = [p for p in result["dropped_examples"] if p["reason"] == "duplicate_pair_id"]
    assert [d["where"] for d in dups] == [f"{figures}:17", f"{figures}:18"]
    assert {d["pair_id"] for d in dups} == {"PMC1900_F1", records[1]["pair_id"]}
    assert result["per_domain"]["gross"] == {"available": 3, "sampled": 3}  # the copy is not counted
    kept = next(r for r in recs if r["pair_id"] == records[1]["pair_id"])
    assert kept == {**records[1], "pmcid": "PMC1001", "license": "unknown"}


def test_diversity_step_draws_across_clusters(tmp_path):
    records = [
        _record(i, "ct_scan", fig_caption=f"axial abdominal ct liver lesion number {i}") for i in range(60)
    ]
    records += [
        _record(100 + i, "ct_scan", fig_caption="coronal brain ct haemorrhage ventricles") for i in range(2)
    ]
    figures = _corpus(tmp_path / "c", records)
    plain = SampleParams(per_domain=4, domains=["ct_scan"], seed=1)
    recs, _ = _run(tmp_path, figures, plain)
    assert not any("brain" in r["fig_caption"] for r in recs)  # the hash-order draw misses the rare group
    div = plain.model_copy(update={"diversity": plain.diversity.model_copy(update={"clusters": 2})})
    recs2, _ = _run(tmp_path, figures, div, "b")
    assert len(recs2) == 4 and sum("brain" in r["fig_caption"] for r in recs2) >= 1
    again, _ = _run(tmp_path, figures, div, "c")
    assert again == recs2


OA_HEADER = "File,Article Citation,Accession ID,Last Updated (YYYY-MM-DD HH:MM:SS),PMID,License\n"


def _oa_list(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    """PMC's oa_file_list.csv layout: (PMCID, PMID, License) per article."""
    lines = [
        f'oa_package/00/0{i}/{pmcid}.tar.gz,"J Test. 2001; 3(1):{i}",{pmcid},2019-11-05 11:56:12,{pmid},{lic}\n'
        for i, (pmcid, pmid, lic) in enumerate(rows)
    ]
    path.write_text(OA_HEADER + "".join(lines))
    return path


def test_every_record_gets_pmid_pmcid_and_license_from_the_oa_file_list(tmp_path):
    records = _balanced(2)  # pair_ids PMC1000_F1.. name their article; pmids "0".."9"
    records[0]["license"] = "CC BY-SA"  # a record's own license wins
    records[1].pop("pmid")  # found by PMCID in the list
    figures = _corpus(tmp_path / "c", records)
    rows = [(f"PMC{1000 + i}", str(i), "CC BY" if i % 3 else "CC BY-NC") for i in range(10)]
    rows[2] = ("PMC1002", "2", "")  # listed without a license
    oa = _oa_list(tmp_path / "oa_file_list.csv", [rows[-1], *rows[:-1]])  # not sorted
    cfg = SampleParams(per_domain=2, corpus={"oa_file_list": str(oa)})
    recs, result = _run(tmp_path, figures, cfg)
    got = {r["pair_id"]: (r["pmid"], r["pmcid"], r["license"]) for r in recs}
    assert got["PMC1000_F1"] == ("0", "PMC1000", "CC BY-SA")
    assert got["PMC1001_F1"] == ("1", "PMC1001", "CC BY")
    assert got["PMC1002_F1"] == ("2", "PMC1002", "unknown")
    assert got["PMC1003_F1"] == ("3", "PMC1003", "CC BY-NC")
    assert result["by_license"] == dict(sorted(Counter(r["license"] for r in recs).items()))
    assert sum(result["by_license"].values()) == len(recs) == 10


def test_sample_licenses_keeps_only_what_the_lab_allows(tmp_path):
    records = _balanced(4)
    figures = _corpus(tmp_path / "c", records)
    rows = [(f"PMC{1000 + i}", str(i), "CC0" if (i // 10) % 2 == 0 else "CC BY-NC") for i in range(40)]
    oa = _oa_list(tmp_path / "oa_file_list.csv", rows)
    cfg = SampleParams(per_domain=4, licenses=["CC0", "CC BY"], corpus={"oa_file_list": str(oa)})
    recs, result = _run(tmp_path, figures, cfg)
    assert {r["license"] for r in recs} == {"CC0"} and len(recs) == 10
    assert result["dropped_by_reason"] == {"license_not_allowed": 10}
    assert result["by_license"] == {"CC0": 10}
    reasons = {x["detail"] for x in result["dropped_examples"] if x["reason"] == "license_not_allowed"}
    assert reasons == {"'CC BY-NC'"}
    # without the list every license is unknown: not allowed unless the lab lists "unknown"
    with pytest.raises(RecordError):
        _run(tmp_path, figures, SampleParams(per_domain=4, licenses=["CC0"]), "b")
    recs, _ = _run(tmp_path, figures, SampleParams(per_domain=4, licenses=["unknown"]), "c")
    assert len(recs) == 20


def test_a_file_that_is_not_the_oa_file_list_names_itself(tmp_path):
    bad = tmp_path / "oa.csv"
    bad.write_text("a,b\n1,2\n")
    cfg = SampleParams(per_domain=2, corpus={"oa_file_list": str(bad)})
    with pytest.raises(RecordError, match=r"oa\.csv:1: not PMC's OA file list"):
        _run(tmp_path, _corpus(tmp_path / "c", _balanced(2)), cfg)
