"""bench/gpu.py: its CPU-sized dry path runs the same code; the docs block it replaces exists once."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import gpu  # noqa: E402


@pytest.mark.slow
def test_dry_run_trains_lora_steps_and_embeds_at_toy_size(tmp_path):
    out = tmp_path / "gpu.json"
    r = subprocess.run(
        [sys.executable, str(REPO / "bench" / "gpu.py"), "--dry", "--json", str(out)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(out.read_text())
    assert res["lora"]["tokens_per_s"] > 0 and res["lora"]["gradient_checkpointing"]
    assert 0 < res["lora"]["params_trainable"] < res["lora"]["params_total"]
    assert res["embed"]["images_per_s"] > 0
    assert res["lora"]["peak_gib"] is None  # the CPU path claims no GPU memory


def test_write_replaces_only_the_marked_block(tmp_path):
    doc = tmp_path / "scaling.md"
    doc.write_text(f"before\n{gpu.MARK_START}\nNot measured.\n{gpu.MARK_END}\nafter\n")
    gpu.write_section(doc, f"{gpu.MARK_START}\n| a table |\n{gpu.MARK_END}")
    assert doc.read_text() == f"before\n{gpu.MARK_START}\n| a table |\n{gpu.MARK_END}\nafter\n"
    assert (REPO / "docs" / "scaling.md").read_text().count(gpu.MARK_START) == 1
