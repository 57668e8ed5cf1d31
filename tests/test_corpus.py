"""Corpus readers: the published formats, streamed; malformed lines listed with file:line."""

from __future__ import annotations

import json
import typing
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vital.corpus import READERS, Malformed, formats, reader
from vital.corpus.jsonstream import iter_json_records
from vital.io import RecordError, read_json, read_jsonl
from vital.params import CorpusFormat, SampleParams
from vital.sample import run
from vital.schema import DOMAINS, FigureRecord


def _flags(name: str) -> dict[str, bool]:
    return {d: d == name for d in ("chest_xray", "ct_scan", "gross", "histology", "mri")}


# Field names and shapes as in LLaVA-Med's llava/instruct/instruct_few_shot_examples.py and
# data/instruct/llava_med_instruct_fig_captions.json (an object keyed by domain)
def _llava_med_fig(pair_id: str, domain: str, mention) -> dict:
    pmid, fig_id = pair_id.split("_", 1)
    return {
        "pair_id": pair_id,
        "pmid": pmid,
        "fig_id": fig_id,
        "fig_label": "Figure 2",
        "fig_caption": "Chest X-ray. Cardiomegaly with a right-sided pleural effusion.",
        "in_text_mention": mention,
        "domain": _flags(domain),
    }


def test_every_figure_format_param_has_a_reader():
    assert formats("figures") == set(typing.get_args(CorpusFormat))
    assert formats("image_urls") == {"llava_med_image_urls"}
    assert formats("instructions") == {"llava_conversations"}
    with pytest.raises(ValueError, match="unknown figures format 'pmc15m'.*known: llava_med_fig_captions"):
        reader("pmc15m")
    assert all(r.kind in ("figures", "image_urls", "instructions") for r in READERS.values())


def test_json_stream_is_chunk_independent_and_names_the_bad_line(tmp_path):
    recs = [{"id": i, "text": "x" * i, "nested": {"a": [i, i + 1]}} for i in range(40)]
    path = tmp_path / "a.json"
    path.write_text(json.dumps(recs, indent=1))
    for chunk in (3, 17, 1 << 20):
        assert [r for _, _, r in iter_json_records(path, chunk=chunk)] == recs
    path.write_text('[{"a": 1},\n{"a": 2},\n{"a": 3,}\n]')
    with pytest.raises(RecordError, match=r"a\.json:3: not valid JSON"):
        list(iter_json_records(path, chunk=4))
    path.write_text('{"mri": [{"a": 1}], "gross": []}')
    assert list(iter_json_records(path)) == [(1, "mri", {"a": 1})]


def test_llava_med_fig_captions_object_keyed_by_domain(tmp_path):
    data = {
        "chest_xray": [
            _llava_med_fig("18627621_F2", "chest_xray", ["He required intubation ( Figure 2 ) ."]),
            "not a record",
        ],
        "ct_scan": [
            _llava_med_fig("16734899_F4", "ct_scan", [{"tokens": "CT scans ( Figure 4 )", "entities": []}]),
            {k: v for k, v in _llava_med_fig("19008992_f5", "gross", "one string").items() if k != "domain"},
        ],
    }
    path = tmp_path / "llava_med_instruct_fig_captions.json"
    path.write_text(json.dumps(data, indent=2))
    items = list(reader("llava_med_fig_captions").read(path))
    assert [type(r).__name__ for _, r in items] == ["dict", "Malformed", "dict", "dict"]
    assert items[1][0] == f"{path}:20 [1]" and items[1][1].reason == "invalid_record"
    a, c, d = (FigureRecord.model_validate(r) for _, r in items if isinstance(r, dict))
    assert (a.pair_id, a.pmid, a.primary_domain, a.image) == (
        "18627621_F2",
        "18627621",
        "chest_xray",
        "images/18627621_F2.jpg",
    )
    assert c.in_text_mention == ["CT scans ( Figure 4 )"]
    assert d.in_text_mention == ["one string"] and d.primary_domain == "ct_scan"  # from the enclosing key


def test_llava_med_fig_captions_jsonl_skips_malformed_lines(tmp_path):
    path = tmp_path / "figs.jsonl"
    good = _llava_med_fig("1_F1", "mri", [])
    path.write_text(json.dumps(good) + "\n{broken\n[1]\n" + json.dumps({**good, "pair_id": "2_F1"}) + "\n")
    items = list(reader("llava_med_fig_captions").read(path, images="imgs"))
    assert [w for w, r in items if isinstance(r, Malformed)] == [f"{path}:2", f"{path}:3"]
    assert items[0][1]["image"] == "imgs/1_F1.jpg"


def _index_rows(n: int) -> list[dict]:
    return [
        {
            "pair_id": f"PMC{i}_F1",
            "pmid": None if i % 3 else str(i),
            "fig_caption": f"Figure {i} caption.",
            "image": f"figures/PMC{i}_F1.jpg",
            "domain": DOMAINS[i % len(DOMAINS)],
        }
        for i in range(n)
    ]


def test_pmc_index_parquet_and_jsonl_sample_the_same_figures(tmp_path):
    rows = _index_rows(200)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "index.parquet", row_group_size=64)
    (tmp_path / "index.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    items = list(reader("pmc_index").read(tmp_path / "index.parquet"))
    assert items[70][0] == f"{tmp_path / 'index.parquet'}:row 70"
    assert FigureRecord.model_validate(items[4][1]).primary_domain == DOMAINS[4]
    out = {}
    for name in ("index.parquet", "index.jsonl"):
        cfg = SampleParams.model_validate(
            {
                "per_domain": 7,
                "corpus": {"format": "pmc_index", "path": str(tmp_path / name), "check_images": False},
            }
        )
        result = run(tmp_path / "unused", tmp_path / f"{name}.out", tmp_path / f"{name}.m.json", cfg)
        assert result["sampled"] == 35 and result["corpus"]["format"] == "pmc_index"
        out[name] = [r["pair_id"] for r in read_jsonl(tmp_path / f"{name}.out")]
    assert out["index.parquet"] == out["index.jsonl"]


def test_llava_med_corpus_with_image_urls_joined_onto_the_sample(tmp_path):
    figs = [_llava_med_fig(f"{100 + i}_F1", DOMAINS[i % 5], []) for i in range(20)]
    figs[3].pop("pmid")
    (tmp_path / "figs.json").write_text(json.dumps(figs))
    urls = [
        {
            "pair_id": f["pair_id"],
            "pmc_tar_url": f"https://ftp.ncbi.nlm.nih.gov/pub/pmc/oa_package/x/PMC{f['pair_id']}.tar.gz",
            "image_file_path": f"PMC{f['pair_id']}/fig.jpg",
        }
        for f in figs[:15]
    ]
    lines = [json.dumps(u) for u in urls] + ['{"pair_id": "x"}', json.dumps(urls[0] | {"pmc_tar_url": "dup"})]
    (tmp_path / "urls.jsonl").write_text("\n".join(lines) + "\n")
    cfg = SampleParams.model_validate(
        {
            "per_domain": 4,
            "corpus": {
                "format": "llava_med_fig_captions",
                "path": str(tmp_path / "figs.json"),
                "image_urls": str(tmp_path / "urls.jsonl"),
                "check_images": False,
            },
        }
    )
    result = run(tmp_path / "unused", tmp_path / "s.jsonl", tmp_path / "m.json", cfg)
    recs = list(read_jsonl(tmp_path / "s.jsonl"))
    assert len(recs) == 20 and result["image_urls"] == {"joined": 15, "without_url": 5}
    by_id = {r["pair_id"]: r for r in recs}
    assert by_id["100_F1"]["pmc_tar_url"].endswith("PMC100_F1.tar.gz")  # the first line wins
    assert by_id["100_F1"]["image"] == "images/100_F1.jpg"
    assert result["dropped_by_reason"] == {"image_urls_invalid_record": 1, "image_urls_duplicate_pair_id": 1}
    listed = [p["where"] for p in read_json(tmp_path / "m.json")["dropped_examples"]]
    assert listed == [f"{tmp_path / 'urls.jsonl'}:16", f"{tmp_path / 'urls.jsonl'}:17"]


def test_llava_conversations_streamed_from_a_json_list(tmp_path):
    recs = [
        {
            "id": str(i),
            "image": f"{i}.jpg",
            "conversations": [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}],
        }
        for i in range(5)
    ]
    path = tmp_path / "llava_med_instruct_60k.json"
    path.write_text(json.dumps(recs[:2] + [7] + recs[2:], indent=1))
    items = list(reader("llava_conversations", "instructions").read(path))
    assert [r for _, r in items if isinstance(r, dict)] == recs
    line = Path(path).read_text().splitlines().index(" 7,") + 1
    assert [w for w, r in items if isinstance(r, Malformed)] == [f"{path}:{line} [2]"]
