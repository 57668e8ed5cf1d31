"""vital export: LLaVA JSON + images that LLaVA-Med's loader opens, and a Hugging Face Parquet dataset with a card."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import datasets
import pytest
import yaml
from PIL import Image

from vital import stats
from vital.export import export
from vital.params import Params
from vital.paths import Paths
from vital.pipeline import STAGES
from vital.shards import ShardWriter, sample_key
from vital.stage import call

REPO = Path(__file__).resolve().parents[1]
LICENSES = ["CC BY", "CC0", "CC BY-NC", "unknown"]


def _png(i: int, size: int = 24) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (i * 37 % 256, i * 11 % 256, 90)).save(buf, format="PNG")
    return buf.getvalue()


def _conversation(i: int) -> list[dict]:
    return [
        {"from": "human", "value": "<image>\nWhich side is the lesion on?"},
        {"from": "gpt", "value": "left" if i % 2 else "right"},
    ]


@pytest.fixture
def fetched(tmp_path):
    """A corpus whose figures were fetched into shards (as `vital fetch-images` + sample.corpus.shards
    leave them: refs relative to the corpus folder), plus one loose image and one missing figure; and
    a curated set over it with two candidates for some figures (one image, several records)."""
    corpus = tmp_path / "corpus"
    sources: dict[str, bytes] = {}
    records = []
    for s in range(2):
        w = ShardWriter(corpus / "shards" / f"shard-{s:05d}.tar")
        for j in range(4):
            i = s * 4 + j
            pair_id = f"PMC{100 + i}_fig.{i}"  # a dot: WebDataset keys cannot keep it
            data = _png(i)
            member = w.add(sample_key(pair_id), "png", data, {"pair_id": pair_id})["member"]
            ref = f"shards/shard-{s:05d}.tar#{member}"
            sources[ref] = data
            for c in range(1 + (i % 2)):
                records.append(
                    {
                        "id": f"{pair_id}#{c}",
                        "image": ref,
                        "conversations": _conversation(i),
                        "pmid": str(500 + i),
                        "pmcid": f"PMC{100 + i}",
                        "license": LICENSES[i % 4],
                        "domain": "ct_scan",
                        "score": 1.0 - i / 10,
                        "provenance": {"pair_id": pair_id, "candidate": f"{pair_id}#{c}"},
                    }
                )
        w.commit()
    (corpus / "images" / "mri").mkdir(parents=True)
    loose = _png(99)
    (corpus / "images" / "mri" / "loose.png").write_bytes(loose)
    sources["images/mri/loose.png"] = loose
    records.append({**records[0], "id": "loose#0", "image": "images/mri/loose.png", "license": None})
    records.append({**records[0], "id": "gone#0", "image": "shards/shard-00001.tar#missing.png"})
    curated = tmp_path / "top40.json"
    curated.write_text(json.dumps(records))
    return curated, corpus, records, sources


def _vital(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "vital.cli", *args], cwd=cwd, env=env, capture_output=True, text=True
    )


def test_llava_export_of_a_fetched_corpus_opens_with_llava_meds_loader(fetched, tmp_path):
    curated, corpus, records, sources = fetched
    out = tmp_path / "release" / "llava"
    r = _vital(
        tmp_path, "export", str(curated), "--format", "llava", "--out", str(out), "--image-root", str(corpus)
    )
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    released = json.loads((out / "top40.json").read_text())
    assert len(released) == len(records) - 1 == result["records"]  # the missing figure is skipped, counted
    assert result["dropped_by_reason"] == {"missing_image": 1}
    assert "missing.png" in result["dropped_examples"][0]["detail"]
    by_id = {rec["id"]: rec for rec in records}
    for rec in released:
        assert not os.path.isabs(rec["image"]) and ".." not in rec["image"] and "#" not in rec["image"]
        # LLaVA-Med's LazySupervisedDataset: Image.open(os.path.join(image_folder, image_file)).convert("RGB")
        Image.open(os.path.join(out, rec["image"])).convert("RGB")
        src = by_id[rec["id"]]
        assert (out / rec["image"]).read_bytes() == sources[src["image"]]
        assert rec["conversations"] == src["conversations"] and "<image>" in rec["conversations"][0]["value"]
        assert (rec["pmid"], rec["pmcid"]) == (src["pmid"], src["pmcid"])
        assert rec["license"] == (src["license"] or "unknown")
    assert result["opened"] == result["records"]
    assert result["images"] == len({r["image"] for r in released}) == 9  # one file per figure
    assert sum(result["by_license"].values()) == len(released)


def test_hf_export_loads_with_datasets_bytes_equal_and_card_counts_equal_the_records(fetched, tmp_path):
    curated, corpus, records, sources = fetched
    out = tmp_path / "release" / "hf"
    card = {"selection": {"method": "selector top 40%", "params": {"curate": {"keep": [40]}}}}
    result = export(curated, "hf", out, corpus, card, shard_rows=4)
    assert result["shards"] == 4 and len(list((out / "data").glob("train-*.parquet"))) == 4  # 13 rows
    ds = datasets.load_dataset(
        "parquet", data_dir=str(out), split="train", cache_dir=str(tmp_path / "hf-cache")
    )
    assert len(ds) == len(records) - 1
    assert isinstance(ds.features["image"], datasets.Image)
    raw = ds.cast_column("image", datasets.Image(decode=False))
    by_id = {rec["id"]: rec for rec in records}
    for row in raw:
        assert row["image"]["bytes"] == sources[by_id[row["id"]]["image"]]
        assert row["conversations"] == by_id[row["id"]]["conversations"]
    assert ds[0]["image"].size == (24, 24)  # decodes to a PIL image
    text = (out / "README.md").read_text()
    header = yaml.safe_load(text.split("---\n")[1])
    counted = Counter(row["license"] for row in raw)
    assert header["vital"]["by_license"] == dict(sorted(counted.items()))
    kept = [r for r in records if r["id"] != "gone#0"]
    assert header["vital"]["by_license"] == dict(
        sorted(Counter(r["license"] or "unknown" for r in kept).items())
    )
    assert header["vital"]["records"] == header["dataset_info"]["splits"][0]["num_examples"] == len(ds)
    assert header["vital"]["selection"]["method"] == "selector top 40%"
    assert len(header["vital"]["provenance"]["curated_sha256"]) == 64
    assert "@inproceedings{cui2024biomedical" in text and "| CC BY-NC |" in text


def test_export_stage_releases_every_subset_and_format_and_names_a_bad_file(fetched, tmp_path):
    curated, corpus, records, _ = fetched
    root = tmp_path / "repo"
    paths = Paths(root)
    paths.curated.mkdir(parents=True)
    (paths.curated / "top40.json").write_text(curated.read_text())
    paths.corpus.parent.mkdir(parents=True)
    corpus.rename(paths.corpus)
    metrics = call(STAGES["export"], Params(), paths)
    assert set(metrics["exports"]) == {"top40/llava", "top40/hf"}
    assert stats.detail(root, "export") == metrics
    assert (root / "artifacts/export/top40/llava/top40.json").is_file()
    assert (root / "artifacts/export/top40/hf/README.md").is_file()
    card = yaml.safe_load((root / "artifacts/export/top40/hf/README.md").read_text().split("---\n")[1])
    assert card["vital"]["selection"]["method"].startswith("selector top 40%")
    assert card["vital"]["provenance"]["curated"] == "artifacts/curated/top40.json"
    (paths.curated / "top40.json").write_text('{"not": "a list"}')
    r = _vital(root, "export", "artifacts/curated/top40.json", "--format", "hf", "--out", "x")
    assert r.returncode == 2 and r.stderr.startswith("vital export: ") and "top40.json" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
