"""docs/paper.md is executed: its fenced ```bash blocks, extracted from the doc (not a copy), run in order in one
bash process from an empty folder, against local stand-ins for what a lab reaches over the network:

- ``VITAL_SRC``: the vital repository (a git repo of this checkout's tracked files, as they are now);
- ``VITAL_STANDINS``: a lab's files in LLaVA-Med's formats (figure captions, image URLs pointing at a
  PMC-style package server on 127.0.0.1), its clinicians' demonstrations and one hand-written label file, the
  evaluation sets as distributed, a tiny open_clip checkpoint in BiomedCLIP's hub layout and a tiny llava-hf
  checkpoint, and ``params.yaml``: the values a lab edits (endpoint, checkpoints, sizes cut to seconds);
- an OpenAI-compatible server on 127.0.0.1 (tests/openai_server.py), its URL in those params.

Clinician labels come both ways the doc describes: rankings posted to a running ``vital annotate`` (dr_b) and
a hand-written label file (dr_a). A doc edit that breaks the walk fails here. The install block is ``console`` (no network here): the commands run
with this project's environment, the clone's code first on PYTHONPATH.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from tests import paper_world
from tests.openai_server import FakeOpenAIServer
from tests.test_fetch import PMC, targz
from vital import stats

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "paper.md"
BLOCK = re.compile(r"^```bash\n(.*?)^```", re.S | re.M)


def bash_blocks(text: str) -> list[str]:
    return [m.group(1) for m in BLOCK.finditer(text)]


def test_the_doc_has_the_walk_in_order():
    steps = "\n".join(bash_blocks(DOC.read_text(encoding="utf-8")))
    order = [
        "git clone",
        "vital dag --write",
        "vital plan",
        "dvc repro",
        "data/labels",
        "dvc repro",
        "vital report",
    ]
    at = 0
    for step in order:
        found = steps.find(step, at)
        assert found >= 0, f"docs/paper.md: {step!r} missing (after position {at})"
        at = found + len(step)
    assert "vital export" in steps[at:]


def _source(out: Path) -> Path:
    """A git repository of this checkout's tracked files (their working-tree contents), data and store aside."""
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    for rel in files.splitlines():
        if rel.startswith(("dvcstore/", "data/")) or not (REPO / rel).is_file():
            continue
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, out / rel)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "vital"]):
        subprocess.run(cmd, cwd=out, check=True, capture_output=True)
    return out


def _standins(out: Path, pmc: PMC, base_url: str) -> Path:
    build = out / ".build"
    records = paper_world.corpus(build)
    paper_world.vqa_sets(out)  # out/eval/... as distributed
    corpus = out / "corpus"
    corpus.mkdir(parents=True)
    captions, urls = [], []
    for r in records:  # one PMC package per article; LLaVA-Med's caption records name the image file only
        article = r["pair_id"].rsplit("_", 1)[0]
        member = f"{article}/{Path(r['image']).name}"
        path = f"/pub/oa_package/{article}.tar.gz"
        pmc.packages[path] = targz({member: (build / "corpus" / r["image"]).read_bytes()})
        captions.append({**r, "image": Path(r["image"]).name})
        urls.append({"pair_id": r["pair_id"], "pmc_tar_url": pmc.base + path, "image_file_path": member})
    (corpus / "llava_med_instruct_fig_captions.json").write_text(json.dumps(captions, indent=1))
    (corpus / "llava_med_image_urls.jsonl").write_text("".join(json.dumps(u) + "\n" for u in urls))
    shutil.copytree(build / "demonstrations", out / "demonstrations")
    shutil.copytree(build / "labels", out / "labels")
    shutil.rmtree(build)
    clip = paper_world.clip_checkpoint(out / "checkpoints" / "clip")
    llava = paper_world.llava_checkpoint(out / "checkpoints" / "llava")
    params = paper_world.paper_params(out, base_url, "checkpoints/clip", "checkpoints/llava")
    paper = yaml.safe_load((REPO / "params-paper.yaml").read_text(encoding="utf-8"))
    params["sample"]["corpus"] = paper["sample"]["corpus"]  # LLaVA-Med's files, fetched by the fetch stage
    params["fetch"] = paper["fetch"] | {"workers": 4, "rate": 1000.0, "backoff": 0.01, "timeout": 10.0}
    assert clip.is_dir() and llava.is_dir()
    (out / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def pmc_server():
    p = PMC()
    server = ThreadingHTTPServer(("127.0.0.1", 0), p.handler())
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    p.base = f"http://127.0.0.1:{server.server_address[1]}"
    yield p
    server.shutdown()
    server.server_close()


@pytest.mark.slow
def test_docs_paper_md_walks_from_an_empty_folder_to_the_evaluated_models(tmp_path, pmc_server):
    walk = tmp_path / "walk"
    walk.mkdir()
    script = "set -euo pipefail\n" + "".join(
        f"echo '### docs/paper.md bash block {i}' >&2\n{block}\n"
        for i, block in enumerate(bash_blocks(DOC.read_text(encoding="utf-8")), 1)
    )
    with FakeOpenAIServer(content_fn=paper_world.content) as server:
        env = {k: v for k, v in os.environ.items() if k not in ("VITAL_FORBID_IMPORTS", "PYTHONPATH")}
        env |= {
            "VITAL_SRC": str(_source(tmp_path / "vital-src")),
            "VITAL_STANDINS": str(_standins(tmp_path / "standins", pmc_server, server.base_url)),
            "OPENAI_API_KEY": paper_world.API_KEY,
            "PYTHONPATH": str(walk / "lab"),  # the clone's code, as `pip install -e .` would make it
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "HF_HUB_OFFLINE": "1",  # the checkpoints are local stand-ins
            "DVC_NO_ANALYTICS": "1",
            "GIT_AUTHOR_NAME": "lab",
            "GIT_AUTHOR_EMAIL": "lab@example.org",
            "GIT_COMMITTER_NAME": "lab",
            "GIT_COMMITTER_EMAIL": "lab@example.org",
            "MLFLOW_TRACKING_URI": f"sqlite:///{walk / 'lab' / 'mlflow.db'}",
            "VITAL_FORBID_IMPORTS": "vital.demo,vital.world",  # the paper profile runs no demo code
            "ANNOTATE_PORT": str(_free_port()),
        }
        r = subprocess.run(
            ["bash", "-c", script], cwd=walk, env=env, capture_output=True, text=True, timeout=1500
        )
        chats = server.chat_requests()
    blocks = re.findall(r"### docs/paper.md bash block (\d+)", r.stderr)
    assert r.returncode == 0, (
        f"block {blocks[-1] if blocks else '?'} failed:\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}"
    )
    lab = walk / "lab"
    assert "vital plan:" in r.stdout and "GiB/GPU" in r.stdout  # the plan was printed before the first repro
    n = len(paper_world.DOMAINS) * paper_world.PER_DOMAIN
    fetched = stats.detail(lab, "fetch")
    assert fetched["fetched"] == n and len(pmc_server.log) == n  # each sampled figure's package, once
    gen = stats.detail(lab, "generate")
    assert gen["candidates"] == n * paper_world.CANDIDATES and len(chats) >= gen["requests_sent"] > 0
    labels = stats.detail(lab, "labels")
    assert labels["backend"] == "files" and labels["labels"] == 2 * n, (
        labels
    )  # dr_b by the server, dr_a by hand
    assert len((lab / "data" / "labels" / "dr_b.jsonl").read_text().splitlines()) == n
    top = json.loads((lab / "artifacts" / "curated" / "top40.json").read_text())
    assert top and (lab / "release" / "llava").is_dir()
    chat = stats.detail(lab, "chat_eval")
    assert set(chat) >= {
        "llava_med_chat"
    }  # tuned, evaluated and judged: the walk reaches the end of the paper
    assert "Traceback" not in r.stderr
