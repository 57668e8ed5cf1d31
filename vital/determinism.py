"""Float kernels and thread counts pinned, so that a stage's bytes do not depend on the CPU it ran on.

PyTorch, MKL and oneDNN each pick their kernels from the CPU at run time (AVX-512 here, AVX2 there) and
split reductions by the number of threads, and each choice rounds floats differently: measured on an
AVX-512 machine, the demo's embed stage wrote four different feature stores under the native kernels,
AVX2, the baseline ISA and one thread instead of two (docs/reproducibility.md). So every vital process
caps all three at AVX2, which any x86-64 CPU of the last decade runs, and every stage runs on a fixed
number of threads:

- ``ATEN_CPU_CAPABILITY=avx2`` (PyTorch's own kernels), ``MKL_CBWR=AVX2`` with
  ``MKL_ENABLE_INSTRUCTIONS=AVX2`` (MKL's conditional numerical reproducibility) and
  ``ONEDNN_MAX_CPU_ISA=AVX2``, set before torch loads unless the environment already sets them;
- ``VITAL_THREADS`` threads per stage (else an ``OMP_NUM_THREADS`` the user set, else 2), through
  ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` before torch loads, and ``torch.set_num_threads`` when it already
  has.

``VITAL_CPU_KERNELS=native`` turns the kernel pins off (faster on AVX-512, bytes of that machine only).
Only x86-64 is pinned: elsewhere the variables mean nothing.
"""

from __future__ import annotations

import os
import platform
import sys

from vital.failures import StageFailed

KERNEL_PINS = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "MKL_CBWR": "AVX2",
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
}
DEFAULT_THREADS = 2


def kernels_pinned() -> bool:
    return os.environ.get("VITAL_CPU_KERNELS", "pinned") != "native" and platform.machine().lower() in (
        "x86_64",
        "amd64",
    )


def pin_cpu_kernels() -> None:
    """Cap the float kernels at AVX2 (no-op where the environment chose, or under VITAL_CPU_KERNELS=native)."""
    if kernels_pinned():
        for name, value in KERNEL_PINS.items():
            os.environ.setdefault(name, value)


def stage_threads() -> int:
    """``VITAL_THREADS``, else an ``OMP_NUM_THREADS`` the user set, else 2."""
    raw = os.environ.get("VITAL_THREADS") or os.environ.get("OMP_NUM_THREADS") or str(DEFAULT_THREADS)
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if n < 1:
        raise StageFailed(f"VITAL_THREADS={raw!r}: want a whole number of threads >= 1")
    return n


def pin_threads() -> int:
    """Run this process on ``stage_threads()`` threads; returns the count."""
    n = stage_threads()
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(n)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(n)
    return n
