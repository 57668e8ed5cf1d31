"""Embed across processes (accelerate launch, gloo on CPU): disjoint batches per rank, merged to the very
bytes one process writes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_embed import world

from vital.embed import run
from vital.embed.ranks import rank_rows
from vital.embed.store import FEATURES, META
from vital.params import EmbedParams

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]


def test_rank_rows_deal_whole_batches():
    parts = [rank_rows(10, 3, r, 2) for r in range(2)]
    assert parts[0].tolist() == [0, 1, 2, 6, 7, 8] and parts[1].tolist() == [3, 4, 5, 9]
    assert rank_rows(2, 4, 1, 2).tolist() == []  # more ranks than batches: an idle rank
    for n, b, w in [(17, 4, 3), (5, 8, 2), (64, 1, 4)]:
        allrows = np.concatenate([rank_rows(n, b, r, w) for r in range(w)])
        assert sorted(allrows.tolist()) == list(range(n))


@pytest.mark.slow
@pytest.mark.parametrize("text_mode", ["rounds", "joint"])
def test_two_processes_write_the_bytes_of_one(tmp_path: Path, text_mode: str):
    paths = world(tmp_path / "w", figures=10, k=3)
    torch.set_num_threads(1)  # as the ranks below: an in-process stage earlier in this worker may have set 2
    run(EmbedParams(batch_size=4, text_mode=text_mode), paths)
    one = {n: (paths.embeddings / n).read_bytes() for n in (FEATURES, META)}
    shutil.rmtree(paths.embeddings)
    accelerate = Path(sys.executable).with_name("accelerate")
    # --multi_gpu is accelerate's torch.distributed launcher (on one node, --cpu means one process or
    # mpirun); with embed.device cpu the ranks join over gloo, no GPU needed
    cmd = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
    cmd += ["--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0"]
    cmd += [str(ROOT / "tests/embed_child.py"), str(tmp_path / "w"), "4", text_mode]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "VITAL_PROGRESS": "off"}
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("rank_result_candidates") == 2  # both ranks ran the stage
    two = {n: (paths.embeddings / n).read_bytes() for n in (FEATURES, META)}
    assert two == one
    results = [json.loads(line) for line in r.stdout.splitlines() if "rank_result_candidates" in line]
    [m] = [x for x in results if x["data_parallel"]]  # rank 0's record: the one run_stage writes
    # 10 figures in batches of 4: rank 0 encodes batches 0 and 2 (4 + 2 rows), rank 1 batch 1 (4 rows)
    assert m["data_parallel"]["processes"] == 2 and m["data_parallel"]["rows_per_rank"]["images"] == [6, 4]
