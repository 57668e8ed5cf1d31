"""A fetched corpus in the pipeline: `vital fetch-images` shards -> ``sample.corpus.shards`` -> `dvc repro`.

Fast: the sample stage swaps each record's image for its shard ref (by pair_id) and skips figures the
fetch did not get; the DAG puts the shards, not ``data/corpus/images``, into the deps of every stage that
opens figures. Slow: a tiny world's figures packed into PMC-style ``.tar.gz`` packages served on
127.0.0.1 with injected failures, fetched, the loose images deleted, then `dvc repro curate`.
"""

from __future__ import annotations

import json
import shutil
from collections import defaultdict
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from tests.test_fetch import PMC, image_bytes, pmc, targz  # noqa: F401 (pmc: the server fixture)
from tests.test_pipeline import REPO, TINY, _merge, ran_stages, sh
from vital import dag, stats
from vital.io import RecordError, read_json, read_jsonl
from vital.params import SampleParams, parse_params
from vital.pipeline import STAGES
from vital.sample import run
from vital.schema import DOMAINS
from vital.shards import ShardWriter, make_ref, open_image

IMAGE_STAGES = ("generate", "judge", "embed", "select", "tune", "bakeoff_tune")


def _record(i: int, domain: str) -> dict:
    return {
        "pair_id": f"PMC{1000 + i}_F1",
        "fig_caption": f"Figure {i} of {domain}.",
        "domain": {d: d == domain for d in DOMAINS},
        "image": f"images/{domain}/PMC{1000 + i}_F1.png",  # never written: images come from the shards
    }


def _shards(folder: Path, pair_ids: list[str]) -> Path:
    """One shard holding ``pair_ids`` and an index in fetch's layout (refs relative to folder's parent)."""
    import pyarrow as pa

    w = ShardWriter(folder / "shard-00000.tar")
    rows = []
    for n, pid in enumerate(pair_ids):
        e = w.add(pid, "png", image_bytes(n), {"pair_id": pid})
        rows.append({"pair_id": pid, "ref": make_ref(f"{folder.name}/shard-00000.tar", e["member"])})
    w.commit()
    pq.write_table(pa.Table.from_pylist(rows), folder / "index.parquet")
    return folder / "index.parquet"


@pytest.mark.parametrize("where", ["corpus/shards", "elsewhere/fetched"])
def test_sample_takes_images_from_the_fetch_index_and_skips_figures_not_fetched(tmp_path: Path, where):
    records = [_record(i * 10 + j, d) for i in range(3) for j, d in enumerate(DOMAINS)]
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    figures = corpus / "figures.jsonl"
    figures.write_text("".join(json.dumps(r) + "\n" for r in records))
    missing = {records[0]["pair_id"], records[7]["pair_id"]}
    index = _shards(tmp_path / where, [r["pair_id"] for r in records if r["pair_id"] not in missing])
    cfg = SampleParams.model_validate({"per_domain": 3, "corpus": {"shards": str(index)}})
    result = run(figures, tmp_path / "sample.jsonl", tmp_path / "sample.json", cfg)
    sampled = list(read_jsonl(tmp_path / "sample.jsonl"))
    assert len(sampled) == len(records) - 2
    for rec in sampled:  # every image is a shard ref that opens from the corpus folder, as stages open it
        assert ".tar#" in rec["image"] and not rec["image"].startswith("images/")
        with open_image(rec["image"], corpus) as im:
            assert im.size == (40, 30)
    assert result["dropped_by_reason"] == {"image_not_fetched": 2}
    listed = [e for e in read_json(tmp_path / "sample.json")["dropped_examples"]]
    assert {e["pair_id"] for e in listed} == missing and all(
        e["reason"] == "image_not_fetched" for e in listed
    )
    assert result["corpus"]["indexed"] == len(records) - 2


def test_a_missing_or_unreadable_index_names_the_param(tmp_path: Path):
    figures = tmp_path / "figures.jsonl"
    figures.write_text(json.dumps(_record(0, "mri")) + "\n")
    cfg = SampleParams.model_validate({"corpus": {"shards": str(tmp_path / "none.parquet")}})
    with pytest.raises(
        FileNotFoundError, match=r"none.parquet: fetch index not found \(sample.corpus.shards"
    ):
        run(figures, tmp_path / "s.jsonl", tmp_path / "s.json", cfg)
    (tmp_path / "bad.parquet").write_text("not parquet")
    cfg = SampleParams.model_validate({"corpus": {"shards": str(tmp_path / "bad.parquet")}})
    with pytest.raises(RecordError, match=r"bad.parquet: not a fetch index \(sample.corpus.shards\)"):
        run(figures, tmp_path / "s.jsonl", tmp_path / "s.json", cfg)


def test_stages_that_open_figures_depend_on_the_shards_when_set():
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    loose = parse_params(raw)
    raw["sample"]["corpus"] = {"shards": "data/corpus/shards/index.parquet"}
    fetched = parse_params(raw)
    for name in IMAGE_STAGES:
        assert "data/corpus/images" in dag.stage_deps(STAGES[name], loose, REPO).data, name
        deps = dag.stage_deps(STAGES[name], fetched, REPO).data
        assert "data/corpus/shards" in deps and "data/corpus/images" not in deps, name
    # sample reads the index, and the shards themselves when it checks that each figure is there
    assert "data/corpus/shards" in dag.stage_deps(STAGES["sample"], fetched, REPO).data
    raw["sample"]["corpus"]["check_images"] = False
    assert dag.stage_deps(STAGES["sample"], parse_params(raw), REPO).data[-1] == (
        "data/corpus/shards/index.parquet"
    )


# ---------------------------------------------------------------- end to end
def _packages(pmc: PMC, corpus: Path) -> tuple[Path, dict[str, list[str]]]:  # noqa: F811
    """The world's figures as one PMC package per article (pair_id ``PMC<n>_F<k>``), an image-URL JSONL
    in LLaVA-Med's layout, and the injected faults: a 404, a truncated archive, a reset then success.
    Returns the URL file and the pair_ids of each faulted article by fault."""
    articles: dict[str, list[dict]] = defaultdict(list)
    for rec in read_jsonl(corpus / "figures.jsonl"):
        articles[rec["pair_id"].rsplit("_", 1)[0]].append(rec)
    multi = [a for a, recs in articles.items() if len(recs) >= 2]
    faulted = {"404": multi[0], "truncated": multi[1], "reset": multi[2]}
    lines = []
    for art, recs in articles.items():
        files = {f"{art}/{Path(r['image']).name}": (corpus / r["image"]).read_bytes() for r in recs}
        body = targz(files)
        path = f"/pub/oa_package/{art}.tar.gz"
        # truncated inside the first member, so that none of its figures can be extracted
        pmc.packages[path] = body if art != faulted["truncated"] else body[:64]
        lines += [
            {"pair_id": r["pair_id"], "pmc_tar_url": pmc.base + path, "image_file_path": member}
            for r, member in zip(recs, files, strict=True)
        ]
    del pmc.packages[f"/pub/oa_package/{faulted['404']}.tar.gz"]
    pmc.faults[f"/pub/oa_package/{faulted['reset']}.tar.gz"] = ["reset"]
    urls = corpus.parent / "llava_med_image_urls.jsonl"
    urls.write_text("".join(json.dumps(x) + "\n" for x in lines))
    ids = {fault: [r["pair_id"] for r in articles[art]] for fault, art in faulted.items()}
    return urls, ids


@pytest.mark.slow
def test_fetched_corpus_goes_through_dvc_repro_to_curate(pmc: PMC, tmp_path: Path):  # noqa: F811
    root = tmp_path / "repo"
    root.mkdir()
    for item in ("dvc.yaml", "stages", "vital"):
        src = REPO / item
        if src.is_dir():
            shutil.copytree(src, root / item, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, root / item)
    # foundation restored from the demo's own checkpoints (data/pretrained, `dvc pull data.dvc`), with the
    # training params they record: the demo backend would train on data/corpus/images, which this corpus no
    # longer has; align is not upstream of curate
    tiny = {k: v for k, v in json.loads(json.dumps(TINY)).items() if k not in ("foundation", "align")}
    params = _merge(yaml.safe_load((REPO / "params.yaml").read_text()), tiny)
    assert params["foundation"]["backend"] == "restore"
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(root, "vital", "world", "--out", "data")
    shutil.copytree(REPO / "data" / "pretrained", root / "data" / "pretrained")

    corpus = root / "data" / "corpus"
    urls, faulted = _packages(pmc, corpus)
    out = sh(
        root,
        *("vital", "fetch-images", str(urls), "--out", "data/corpus/shards", "--shard-size", "16"),
        *("--workers", "4", "--rate", "1000", "--backoff", "0.01", "--timeout", "10"),
    )
    shards = corpus / "shards"
    report = {r["pair_id"]: r for r in read_jsonl(shards / "report.jsonl")}
    base = f"{pmc.base}/pub/oa_package"
    # every permanent failure is listed with its URL; the reset package was retried and fetched
    failed = set(faulted["404"]) | set(faulted["truncated"])
    assert set(report) == failed, out.stdout
    for pid in faulted["404"]:
        assert report[pid]["reason"] == "not_found" and report[pid]["url"].startswith(base)
        assert (
            report[pid]["url"].endswith(f"/{pid.rsplit('_', 1)[0]}.tar.gz") and "404" in report[pid]["detail"]
        )
    for pid in faulted["truncated"]:
        assert report[pid]["reason"] == "truncated_archive"
        assert report[pid]["url"] == f"{base}/{pid.rsplit('_', 1)[0]}.tar.gz"
    reset_path = f"/pub/oa_package/{faulted['reset'][0].rsplit('_', 1)[0]}.tar.gz"
    assert [f for p, f in pmc.log if p == reset_path] == ["reset", "ok"]
    index = pq.read_table(shards / "index.parquet").column("pair_id").to_pylist()
    assert set(faulted["reset"]) <= set(index) and not failed & set(index)
    assert len(index) == sum(1 for _ in read_jsonl(corpus / "figures.jsonl")) - len(failed)

    # nothing may read a loose image now: every figure comes out of the shards
    shutil.rmtree(corpus / "images")
    params["sample"]["corpus"] = {"shards": "data/corpus/shards/index.parquet"}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(root, "vital", "dag", "--write")
    declared = dag.declared(root / "dvc.yaml")
    for name in ("sample", "generate", "judge", "embed", "select"):
        assert "data/corpus/shards" in declared[name] and "data/corpus/images" not in declared[name], name
    (root / ".gitignore").write_text("/.vital/\n/mlflow.db\n/mlruns/\n__pycache__/\n")
    sh(root, "git", "init", "-q")
    sh(root, "dvc", "init", "-q")
    sh(root, "dvc", "add", "-q", "data")
    sh(root, "git", "add", "-A")
    sh(root, "git", "commit", "-qm", "fetched corpus")

    first = sh(root, "dvc", "repro", "curate")
    upstream = {"foundation", "sample", "generate", "judge", "labels", "pairs", "embed", "select", "curate"}
    assert ran_stages(first.stdout) == upstream
    assert (root / "metrics" / "curate.json").is_file() and any((root / "artifacts" / "curated").iterdir())
    sample = stats.read(root, "sample")
    assert sample["dropped_by_reason"] == {"image_not_fetched": len(failed)}
    assert {e["pair_id"] for e in sample["dropped_examples"]} == failed
    sampled = list(read_jsonl(root / "artifacts" / "sample.jsonl"))
    assert sampled and all(r["image"].startswith("shards/shard-") for r in sampled)
    assert not failed & {r["pair_id"] for r in sampled}
    # the embed stage read every sampled figure out of the shards (none unreadable)
    embed = stats.read(root, "embed")
    assert embed["dropped"] == 0 and embed["detail"]["figures"] == len(sampled), embed

    sh(root, "git", "add", "-A")
    sh(root, "git", "commit", "-qm", "repro")
    again = sh(root, "dvc", "repro", "curate")
    assert ran_stages(again.stdout) == set(), again.stdout
