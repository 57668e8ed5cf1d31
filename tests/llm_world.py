"""A tiny on-disk world for generate/judge tests: figures, images, demonstrations, params."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from vital.params import Params, parse_params

KEY_ENV = "VITAL_TEST_OPENAI_KEY"
KEY = "sk-test-never-logged-0123456789"


def make_world(root: Path, n: int = 6, bad: bool = True) -> list[dict]:
    """n figures with PNG images; with ``bad``, figure 0 has no image file and figure 1 an empty caption."""
    images = root / "data" / "corpus" / "images" / "ct_scan"
    images.mkdir(parents=True, exist_ok=True)
    recs = []
    for i in range(n):
        pid = f"PMC{i:04d}_F1"
        path = images / f"{i:04d}.png"
        if not (bad and i == 0):
            Image.new("RGB", (96, 64), (i * 20 % 255, 80, 120)).save(path)
        recs.append(
            {
                "pair_id": pid,
                "pmid": str(1000 + i),
                "fig_caption": "" if bad and i == 1 else f"Axial CT showing lesion {i}.",
                "in_text_mention": [f"Figure {i} shows the lesion."],
                "domain": {"ct_scan": True},
                "image": f"images/ct_scan/{i:04d}.png",
            }
        )
    (root / "artifacts").mkdir(exist_ok=True)
    (root / "artifacts" / "sample.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    demos = root / "data" / "demonstrations"
    demos.mkdir(parents=True, exist_ok=True)
    demo = {
        "id": "demo-ct-1",
        "fig_caption": "CT of the liver with a mass.",
        "in_text_mention": [],
        "conversations": [
            {"from": "human", "value": "<image>\nWhat is shown?"},
            {"from": "gpt", "value": "An axial CT with a liver mass."},
        ],
    }
    (demos / "ct_scan.json").write_text(json.dumps([demo, {**demo, "id": "demo-ct-2"}]))
    return recs


def api_params(base_url: str, root: Path, **generate) -> Params:
    client = {
        "base_url": base_url,
        "api_key_env": KEY_ENV,
        "concurrency": 4,
        "rpm": 60_000,
        "tpm": 100_000_000,
        "max_retries": 3,
        "timeout_s": 2,
        "cache_dir": str(root / ".vital" / "cache"),
    }
    gen = {
        "backend": "openai",
        "model": "test-model",
        "candidates": 2,
        "max_invalid_retries": 1,
        "prices": {"test-model": {"input_per_1m": 2.5, "output_per_1m": 10.0}},
        "client": client,
        **generate,
    }
    judge = {
        "backend": "openai",
        "model": "test-model",
        "client": client,
        "batch_poll_s": 0.05,
        "prices": {"test-model": {"input_per_1m": 2.5, "output_per_1m": 10.0}},
    }
    return parse_params({"generate": gen, "judge": judge})
