"""Conclusions that hold on any machine (issue 22): select and bakeoff rerun on a small world under other
float kernels and another thread count, and every verdict vital/results.py states keeps its sign.

The baseline runs as every stage does (kernels pinned at AVX2, 2 threads); the others under the baseline ISA
(``ATEN_CPU_CAPABILITY=default``, MKL and oneDNN at SSE) on 1 thread, and under the machine's own kernels
(``VITAL_CPU_KERNELS=native``: AVX-512 where the CPU has it) on 1 thread. The children wait for their
threads passively (``OMP_WAIT_POLICY``: the arithmetic is the same, the 2-thread run's CPU time a sixth).
A finding must stay a finding of the same sign; a "no finding" may stay or become one, but not a finding
against the sign of its mean.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

from test_bakeoff import BAD, GOOD, TRUTH, conv
from test_selector import synthetic

from vital import stats
from vital.determinism import KERNEL_PINS
from vital.embed.store import load_embeddings
from vital.io import write_jsonl
from vital.paths import Paths

ROOT = Path(__file__).resolve().parents[1]
X86 = platform.machine().lower() in ("x86_64", "amd64")
PARAMS = {
    "selector": {
        "human_weight": "auto",
        "auto_weights": [0, 50],
        "compare_weights": [0],
        "epochs": 30,
        "patience": 10,
        "lr": 3e-3,
        "hidden": 32,
        "seed_repeats": 3,
    },
    "bakeoff": {
        "methods": ["random", "length", "clip", "judge", "selector_w0", "selector"],
        "downstream_methods": ["random", "judge", "selector"],
    },
}
CONFIGS = {
    "pinned, 2 threads": {"VITAL_THREADS": "2"},
    "baseline ISA, 1 thread": {
        "ATEN_CPU_CAPABILITY": "default",
        "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
        "MKL_CBWR": "COMPATIBLE",
        "ONEDNN_MAX_CPU_ISA": "SSE41",
        "VITAL_THREADS": "1",
    },
    "native kernels, 1 thread": {"VITAL_CPU_KERNELS": "native", "VITAL_THREADS": "1"},
}


def world(root: Path) -> Paths:
    """test_selector's world (clinicians see the truth, the judge a noisy mix) with conversations whose
    flaws follow the same truth, so the bakeoff's truth quality scorer rates every subset."""
    paths = synthetic(root, figures=300)
    emb = load_embeddings(paths.embeddings)
    flawed = list(BAD.values())
    cands, truth = [], []
    for i, (cid, pid) in enumerate(zip(emb.candidate_ids, emb.pair_ids, strict=True)):
        text = GOOD if emb.text[i, 0] > 0 else flawed[i % len(flawed)]
        cands.append(
            {
                "id": cid,
                "pair_id": pid,
                "image": f"images/{pid}.png",
                "domain": "ct_scan",
                "conversations": conv(text),
            }
        )
    for pid in dict.fromkeys(emb.pair_ids):
        truth.append({"pair_id": pid, **TRUTH})
    write_jsonl(paths.candidates, cands)
    write_jsonl(paths.truth, truth)
    # the upstream stages' evidence, whose costs the bakeoff reads (vital.stats's layout)
    upstream = {"labels": {"labels": 180, "human_pairs": 900}, "embed": {}, "judge": {}, "pairs": {}}
    for stage, detail in upstream.items():
        stats.write(paths.root, stats.StageStats.from_record(stage, detail, wall_s=1.0))
    return paths


def rerun(src: Path, dst: Path, env: dict[str, str]) -> dict:
    shutil.copytree(src, dst)
    clean = {
        k: v for k, v in os.environ.items() if k not in (*KERNEL_PINS, "VITAL_CPU_KERNELS", "OMP_NUM_THREADS")
    }
    out = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "conclusions_child.py"), str(dst), json.dumps(PARAMS)],
        env={**clean, "PYTHONPATH": str(ROOT), "OMP_WAIT_POLICY": "PASSIVE", **env},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["scores_md5"] = hashlib.md5(
        (dst / "artifacts" / "scores_by_weight.jsonl").read_bytes()
    ).hexdigest()
    return result


def test_every_stated_conclusion_keeps_its_sign_under_other_kernels_and_threads(tmp_path: Path):
    src = world(tmp_path / "world").root
    runs = {name: rerun(src, tmp_path / f"run{i}", env) for i, (name, env) in enumerate(CONFIGS.items())}
    base_name, base = next(iter(runs.items()))
    print({n: (r["kernels"], r["threads"], r["cpu_s"], r["scores_md5"][:8]) for n, r in runs.items()})
    if X86:  # the other kernels did change the floats (else this test would check nothing)
        # torch runs no more threads than the cores it sees (docs/reproducibility.md)
        assert base["kernels"] == "AVX2" and base["threads"] == min(2, os.cpu_count() or 1)
        assert runs["baseline ISA, 1 thread"]["scores_md5"] != base["scores_md5"]
    found = {n: v for n, v in base["findings"].items() if v[2].startswith("**finding")}
    assert any(n.startswith("select:") for n in found) and any(n.startswith("bakeoff:") for n in found)
    for name, run in list(runs.items())[1:]:
        assert set(run["findings"]) == set(base["findings"]), name
        for key, (mean, _ci, verdict) in base["findings"].items():
            _, _, other = run["findings"][key]
            if verdict.startswith("**finding"):
                assert other == verdict, f"{key}: {verdict} under {base_name}, {other} under {name}"
            elif other.startswith("**finding") and mean:
                against = "lower" if mean > 0 else "higher"
                assert against not in other, f"{key}: mean {mean} under {base_name}, {other} under {name}"
