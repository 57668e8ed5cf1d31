"""The CPU float kernels and thread counts every vital process pins (vital/determinism.py)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from vital.determinism import KERNEL_PINS, pin_threads, stage_threads
from vital.failures import StageFailed

ROOT = Path(__file__).resolve().parents[1]
X86 = platform.machine().lower() in ("x86_64", "amd64")

# a float computation whose bytes depend on the kernels: matmuls, a conv, a softmax, a reduction
PROBE = """
import hashlib, os, sys
sys.path.insert(0, os.environ["ROOT"])
import vital, torch
g = torch.Generator().manual_seed(0)
x = torch.randn(64, 3, 32, 32, generator=g)
torch.manual_seed(0)
conv = torch.nn.Conv2d(3, 16, 3)
h = conv(x).flatten(1)
w = torch.randn(h.shape[1], 257, generator=g)
y = torch.softmax(h @ w / 7.0, dim=-1) @ torch.randn(257, 33, generator=g)
print(torch.backends.cpu.get_cpu_capability(), hashlib.md5(y.detach().numpy().tobytes()).hexdigest())
"""


def _probe(env: dict[str, str]) -> tuple[str, str]:
    clean = {k: v for k, v in os.environ.items() if k not in KERNEL_PINS and k != "VITAL_CPU_KERNELS"}
    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        env={**clean, "ROOT": str(ROOT), "OMP_NUM_THREADS": "2", **env},
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout.split()
    return out[0], out[1]


@pytest.mark.skipif(not X86, reason="the kernel pins apply to x86-64 only")
def test_importing_vital_caps_the_kernels_at_avx2_and_what_the_user_sets_wins():
    capability, pinned = _probe({})
    assert capability == "AVX2"
    # what the user sets wins (the conclusions-across-kernels test relies on it), and the probe's bytes do
    # depend on the kernels, so equal bytes elsewhere mean something
    other_capability, other = _probe({"ATEN_CPU_CAPABILITY": "default"})
    assert other_capability == "DEFAULT"
    assert other != pinned


def test_stage_threads_are_pinned_and_a_bad_count_is_one_line(monkeypatch):
    monkeypatch.delenv("VITAL_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert stage_threads() == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the user's own setting is kept
    assert stage_threads() == 1
    monkeypatch.setenv("VITAL_THREADS", "3")
    import torch

    before = torch.get_num_threads()
    try:
        assert pin_threads() == 3
        assert torch.get_num_threads() == 3 and os.environ["OMP_NUM_THREADS"] == "3"
    finally:
        torch.set_num_threads(before)
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv("VITAL_THREADS", bad)
        with pytest.raises(StageFailed, match="VITAL_THREADS"):
            stage_threads()
