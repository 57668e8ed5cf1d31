"""The tune stage past one process: `accelerate launch` with 2 CPU processes (torchrun + gloo).

Against a one-process tune at the same global batch (3 examples x 2 micro-batches: accumulated in one
process, one per rank in two), the loss curve and the final weights agree within 1e-4 (absolute): the
data and its order are the same, only the order of float additions differs (gloo's all-reduce against
accumulation). Only rank 0 writes the metrics, the curve and the MLflow run; and a 2-process tune killed
after a checkpoint resumes to the uninterrupted 2-process result within 1e-6.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
import yaml
from safetensors.torch import load_file

from vital import lineage
from vital.llava.testing import side_records, tiny_base, write_llava_json

REPO = Path(__file__).resolve().parents[1]
CHILD = REPO / "tests" / "tune_dist_child.py"
CPU2 = REPO / "configs" / "accelerate" / "cpu2.yaml"
STEPS, EVERY = 6, 2
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist") / "template"
    tiny_base(root / "models" / "base", width=32, patch_size=16)
    records = side_records(root / "data" / "corpus", 24, size=64)
    write_llava_json(root / "artifacts" / "curated" / "top40.json", records)
    return root


def _repo(template: Path, where: Path, grad_accum: int) -> Path:
    shutil.copytree(template, where)
    tune = {
        "method": "lora",
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
        "max_steps": STEPS,
        "batch_size": 3,
        "grad_accum": grad_accum,
        "checkpoint_every": EVERY,
        "lr": 5e-3,
        "seed": 0,
    }
    (where / "params.yaml").write_text(yaml.safe_dump({"tune": tune, "mlflow": {"enabled": True}}))
    return where


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return env | {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _command(processes: int, sleep_s: float) -> list[str]:
    child = [str(CHILD), ".", "top", "0", str(sleep_s)]
    if processes == 1:
        return [sys.executable, *child]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CPU2)]
    return [*launch, "--main_process_ip", "127.0.0.1", "--main_process_port", str(_free_port()), *child]


def _run(root: Path, processes: int) -> None:
    r = subprocess.run(
        _command(processes, 0), cwd=root, env=_env(), capture_output=True, text=True, timeout=600
    )
    # the first traceback: under torchrun the last lines are the launcher's, not the cause
    assert r.returncode == 0, r.stderr[r.stderr.find("Traceback") :][:4000]


def _curve(root: Path) -> list[tuple[int, float]]:
    rows = (root / "metrics" / "plots" / "tune" / "top-s0.csv").read_text().splitlines()[1:]
    return [(int(s), float(v)) for s, v in (r.split(",") for r in rows)]


def _assert_same(root: Path, ref: Path, tol: float) -> None:
    got, want = _curve(root), _curve(ref)
    assert [s for s, _ in got] == [s for s, _ in want] == list(range(1, STEPS + 1))
    for (_, a), (_, b) in zip(got, want, strict=True):
        assert abs(a - b) <= tol, (got, want)
    w1 = load_file(str(root / "models" / "tuned" / "top-s0" / "model.safetensors"))
    w2 = load_file(str(ref / "models" / "tuned" / "top-s0" / "model.safetensors"))
    assert w1.keys() == w2.keys()
    for k in w1:
        torch.testing.assert_close(w1[k], w2[k], atol=tol, rtol=0)


def _writes(root: Path, rank: int) -> list[str]:
    f = root / f"writes-rank{rank}.txt"
    return f.read_text().split() if f.is_file() else []


@pytest.fixture(scope="module")
def one_process(template, tmp_path_factory):
    root = _repo(template, tmp_path_factory.mktemp("one") / "repo", grad_accum=2)
    _run(root, 1)
    return root


@pytest.fixture(scope="module")
def two_processes(template, tmp_path_factory):
    root = _repo(template, tmp_path_factory.mktemp("two") / "repo", grad_accum=1)
    _run(root, 2)
    return root


def test_two_process_tune_matches_one_process_at_the_same_global_batch(one_process, two_processes):
    _assert_same(two_processes, one_process, tol=1e-4)
    base = load_file(str(one_process / "models" / "base" / "model.safetensors"))
    tuned = load_file(str(two_processes / "models" / "tuned" / "top-s0" / "model.safetensors"))
    assert any(not torch.equal(base[k], tuned[k]) for k in base if k in tuned)  # it did train


def test_only_rank_zero_writes_metrics_curve_and_mlflow(two_processes, monkeypatch):
    # mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI, so an earlier in-process test may have left one
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert sorted(_writes(two_processes, 0)) == ["curve", "metrics", "mlflow"]
    assert _writes(two_processes, 1) == []
    name, version = lineage.resolve_version("vital-llava-top-s0", two_processes)
    assert version == "1"  # one registered version, not one per rank
    assert lineage.walk_back(name, version, two_processes)["source"] == "models/tuned/top-s0"
    assert not (two_processes / ".vital" / "checkpoints" / "tune" / "models_tuned_top-s0").exists()


def test_killed_two_process_tune_resumes_to_the_same_result(template, two_processes, tmp_path):
    root = _repo(template, tmp_path / "repo", grad_accum=1)
    ckpt = root / ".vital" / "checkpoints" / "tune" / "models_tuned_top-s0"
    proc = subprocess.Popen(
        _command(2, sleep_s=5), cwd=root, env=_env(),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while not (ckpt / f"step-{EVERY}" / "trainer_state.json").is_file():
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        time.sleep(0.2)
    # the whole tree, as a lost node or the OOM killer would: torchrun starts each rank in a session of its
    # own, so killing the launcher's process group would leave the ranks training on
    ranks = psutil.Process(proc.pid).children(recursive=True)
    for p in [psutil.Process(proc.pid), *ranks]:
        p.send_signal(signal.SIGKILL)
    proc.wait()
    _, alive = psutil.wait_procs(ranks, timeout=30)
    assert not alive
    assert not (root / "models" / "tuned" / "top-s0").exists() and _writes(root, 0) == []
    _run(root, 2)
    metrics = yaml.safe_load((root / "metrics" / "detail" / "tune" / "top-s0.json").read_text())["detail"]
    assert metrics["resumed_from"] == EVERY and metrics["steps"] == STEPS
    _assert_same(root, two_processes, tol=1e-6)
