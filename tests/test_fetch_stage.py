"""The fetch stage (issue 24 item 1): a real ``dvc repro`` in a temp git+DVC repo goes from a caption file
and an image-URL file in LLaVA-Med's formats, through sample and fetch (PMC-style packages served on
127.0.0.1), to generate's candidates with no manual step; a second repro reruns nothing, and a forced
fetch downloads nothing again (the extracted figures are kept in ``fetch.cache_dir``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from tests.test_annotate import paths  # noqa: F401 (a fixture)
from tests.test_corpus_fetch import _packages
from tests.test_fetch import PMC, pmc  # noqa: F401 (pmc: the server fixture)
from tests.test_pipeline import REPO, TINY, _merge, ran_stages, sh
from vital import dag, stats
from vital.corpus_paths import corpus_images
from vital.io import read_jsonl
from vital.params import ParamsError, parse_params
from vital.pipeline import STAGES
from vital.shards import open_image


def test_fetch_needs_the_url_file_and_excludes_prefetched_shards():
    base = yaml.safe_load((REPO / "params.yaml").read_text())
    with pytest.raises(ParamsError, match="fetch.enabled needs sample.corpus.image_urls"):
        parse_params(_merge(json.loads(json.dumps(base)), {"fetch": {"enabled": True}}))
    both = {
        "fetch": {"enabled": True},
        "sample": {"corpus": {"image_urls": "u.jsonl", "shards": "s/index.parquet", "check_images": False}},
    }
    with pytest.raises(ParamsError, match="set one"):
        parse_params(_merge(json.loads(json.dumps(base)), both))


def test_the_demo_profile_reads_local_images_and_the_paper_profile_the_fetch_output():
    demo = parse_params(yaml.safe_load((REPO / "params.yaml").read_text()))
    paper = parse_params(yaml.safe_load((REPO / "params-paper.yaml").read_text()))
    assert corpus_images(demo, REPO) == ["data/corpus/images"] and not demo.fetch.enabled
    assert paper.fetch.enabled and corpus_images(paper, REPO) == ["artifacts/figures"]
    # the demo's no-op fetch reads nothing, so no demo stage waits on it
    assert "artifacts/sample.jsonl" not in dag.stage_deps(STAGES["fetch"], demo, REPO).all
    assert "artifacts/sample.jsonl" in dag.stage_deps(STAGES["fetch"], paper, REPO).all
    for name in ("generate", "judge", "embed", "select", "tune", "bakeoff_tune"):
        assert "artifacts/figures" in dag.stage_deps(STAGES[name], paper, REPO).all, name
        assert "artifacts/figures" not in dag.stage_deps(STAGES[name], demo, REPO).all, name


@pytest.mark.slow
def test_dvc_repro_goes_from_llava_med_files_through_fetch_to_candidates(pmc: PMC, tmp_path: Path):  # noqa: F811
    root = tmp_path / "repo"
    root.mkdir()
    for item in ("dvc.yaml", "stages", "vital"):
        src = REPO / item
        if src.is_dir():
            shutil.copytree(src, root / item, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, root / item)
    params = _merge(yaml.safe_load((REPO / "params.yaml").read_text()), json.loads(json.dumps(TINY)))
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(root, "vital", "world", "--out", "data")
    corpus = root / "data" / "corpus"
    urls, faulted = _packages(pmc, corpus)
    # the caption file as LLaVA-Med ships it: records without local images (they are in the packages)
    captions = corpus / "llava_med_instruct_fig_captions.jsonl"
    records = list(read_jsonl(corpus / "figures.jsonl"))
    captions.write_text("".join(json.dumps({**r, "image": Path(r["image"]).name}) + "\n" for r in records))
    shutil.rmtree(corpus / "images")
    (corpus / "figures.jsonl").unlink()
    params["sample"]["corpus"] = {
        "format": "llava_med_fig_captions",
        "path": "data/corpus/llava_med_instruct_fig_captions.jsonl",
        "image_urls": urls.relative_to(root).as_posix(),
        "check_images": False,
    }
    params["fetch"].update(enabled=True, shard_size=16, workers=4, rate=1000.0, backoff=0.01, timeout=10.0)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(root, "vital", "dag", "--write")
    (root / ".gitignore").write_text("/.vital/\n/mlflow.db\n/mlruns/\n__pycache__/\n")
    sh(root, "git", "init", "-q")
    sh(root, "dvc", "init", "-q")
    sh(root, "dvc", "add", "-q", "data")
    sh(root, "git", "add", "-A")
    sh(root, "git", "commit", "-qm", "a lab's LLaVA-Med files")

    out = sh(root, "dvc", "repro", "generate")
    assert ran_stages(out.stdout) == {"sample", "fetch", "generate"}, out.stdout
    sampled = {r["pair_id"] for r in read_jsonl(root / "artifacts" / "sample.jsonl")}
    # exactly the sampled figures' packages, each once (the reset one twice: it is retried)
    wanted = {f"/pub/oa_package/{pid.rsplit('_', 1)[0]}.tar.gz" for pid in sampled}
    asked = [path for path, fault in pmc.log if fault != "reset"]
    assert set(asked) == wanted and len(asked) == len(wanted), (sorted(set(asked) ^ wanted), len(asked))
    assert len(sampled) < len(records)
    failed = (set(faulted["404"]) | set(faulted["truncated"])) & sampled
    assert failed, "the sample should hold some figures whose packages fail"
    report = {r["pair_id"]: r["reason"] for r in read_jsonl(root / "artifacts" / "figures" / "report.jsonl")}
    assert set(report) == failed and set(report.values()) <= {"not_found", "truncated_archive"}
    cands = list(read_jsonl(root / "artifacts" / "candidates.jsonl"))
    assert {c["pair_id"] for c in cands} == sampled - failed
    for c in cands[:5]:  # every image comes out of the fetch stage's shards
        assert c["image"].startswith("../../artifacts/figures/shard-"), c["image"]
        with open_image(c["image"], corpus) as im:
            im.load()
    gen = stats.read(root, "generate")
    assert gen["dropped_by_reason"].get("image_not_fetched") == len(failed)
    fetch_metrics = stats.detail(root, "fetch")
    assert fetch_metrics["fetched"] == len(sampled - failed)

    again = sh(root, "dvc", "repro", "generate")
    assert ran_stages(again.stdout) == set(), again.stdout
    hits = len(pmc.log)
    forced = sh(root, "dvc", "repro", "-f", "-s", "fetch")
    assert ran_stages(forced.stdout) == {"fetch"}
    failed_packages = {f"/pub/oa_package/{pid.rsplit('_', 1)[0]}.tar.gz" for pid in failed}
    # only the failed packages are asked for again: every fetched figure came from the cache
    assert {p for p, _ in pmc.log[hits:]} <= failed_packages, pmc.log[hits:]
    # the shards are rebuilt byte for byte from the cache: nothing downstream is stale
    assert "up to date" in sh(root, "dvc", "status", "generate").stdout


def test_annotate_serves_a_fetched_figure_through_the_fetch_index(paths, tmp_path: Path):  # noqa: F811
    """The sample keeps LLaVA-Med's image name; the fetch stage's index says where the bytes are."""
    import io

    from PIL import Image

    from tests.test_annotate import _call, _serve
    from vital.annotate.session import AnnotationSession, load_tasks
    from vital.fetch import write_index
    from vital.shards import ShardWriter

    jpeg = io.BytesIO()
    Image.new("RGB", (16, 8), (10, 200, 10)).save(jpeg, "JPEG")
    writer = ShardWriter(paths.fetched / "shard-00000.tar")
    entry = writer.add("PMC1_F1", "jpg", jpeg.getvalue(), {"pair_id": "PMC1_F1"})
    writer.commit()
    manifest = {
        "shard": "shard-00000.tar",
        "figures": [{"pair_id": "PMC1_F1", "width": 16, "height": 8, **entry}],
    }
    write_index(paths.fetched, [manifest])
    for p in (paths.corpus / "images").rglob("*.png"):
        p.unlink()  # nothing local: the figure exists only in the fetch stage's shard
    session = AnnotationSession(paths, "dr_a", load_tasks(paths, "dr_a"))
    server, url = _serve(session)
    try:
        status, body = _call(f"{url}/image/PMC1_F1")
        assert status == 200 and body == jpeg.getvalue()
    finally:
        server.shutdown()
