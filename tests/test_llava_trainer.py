"""The shared training loop: deterministic order, gradient accumulation, checkpoint rotation."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from vital.llava.trainer import (
    LoopConfig,
    claim_checkpoint_dir,
    latest_checkpoint,
    micro_batches,
    plan_steps,
    train,
)


class Toy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = torch.nn.Linear(2, 1)

    def forward(self, x, attention_mask, labels):
        return SimpleNamespace(loss=((self.lin(x) - 1) ** 2).mean())


def _data(n=16):
    g = torch.Generator().manual_seed(0)
    return [{"x": torch.randn(2, generator=g)} for _ in range(n)]


def _collate(batch):
    n = len(batch)
    return {
        "x": torch.stack([b["x"] for b in batch]),
        "attention_mask": torch.ones(n, 3, dtype=torch.long),
        "labels": torch.zeros(n, 3, dtype=torch.long),
    }


def test_micro_batches_are_a_function_of_the_seed():
    a, b, c = (
        micro_batches(10, 3, 2, seed=1),
        micro_batches(10, 3, 2, seed=1),
        micro_batches(10, 3, 2, seed=2),
    )
    assert a == b and a != c
    assert sorted(i for mb in a[:4] for i in mb) == list(range(10))  # each epoch is a permutation
    assert [len(mb) for mb in a] == [3, 3, 3, 1] * 2


def test_plan_steps_epochs_and_max_steps():
    batches, steps = plan_steps(10, LoopConfig(checkpoint_dir=".", epochs=1.5, batch_size=3, grad_accum=2), 1)
    assert len(batches) == 6 and steps == 3
    batches, steps = plan_steps(10, LoopConfig(checkpoint_dir=".", max_steps=7, batch_size=3), 1)
    assert len(batches) == 7 and steps == 7
    with pytest.raises(ValueError, match="no training examples"):
        plan_steps(0, LoopConfig(checkpoint_dir="."), 1)


@pytest.mark.parametrize("accum", [1, 2, 4])
def test_gradient_accumulation_consumes_accum_micro_batches_per_step(tmp_path, accum):
    cfg = LoopConfig(checkpoint_dir=tmp_path, max_steps=2, batch_size=2, grad_accum=accum, lr=0.1)
    model = Toy()
    before = model.lin.weight.detach().clone()
    _, result, acc = train(model, _data(), _collate, cfg)
    assert result.steps == 2
    assert result.tokens == 2 * accum * 2 * 3  # steps x micro-batches x batch x tokens per example
    assert acc.gradient_accumulation_steps == accum
    assert not torch.equal(model.lin.weight, before)


def test_checkpoints_rotate_and_frozen_model_is_refused(tmp_path):
    cfg = LoopConfig(
        checkpoint_dir=tmp_path, max_steps=7, batch_size=2, checkpoint_every=2, keep_checkpoints=2
    )
    train(Toy(), _data(), _collate, cfg)
    assert sorted(p.name for p in tmp_path.glob("step-*")) == ["step-4", "step-6"]
    assert latest_checkpoint(tmp_path).name == "step-6"
    frozen = Toy().requires_grad_(False)
    with pytest.raises(ValueError, match="every parameter is frozen"):
        train(frozen, _data(), _collate, LoopConfig(checkpoint_dir=tmp_path / "f", max_steps=1))


def test_claim_checkpoint_dir_wipes_other_runs(tmp_path):
    cfg = LoopConfig(checkpoint_dir=tmp_path / "c", fingerprint={"lr": 1})
    assert claim_checkpoint_dir(cfg)
    (tmp_path / "c" / "step-3").mkdir()
    assert claim_checkpoint_dir(cfg) and (tmp_path / "c" / "step-3").exists()
    cfg.fingerprint = {"lr": 2}
    assert not claim_checkpoint_dir(cfg) and not (tmp_path / "c" / "step-3").exists()


def test_half_written_checkpoint_is_ignored_and_removed(tmp_path):
    # A kill during a save leaves .tmp-step-N (even with its state file, written just before the rename).
    cfg = LoopConfig(checkpoint_dir=tmp_path, fingerprint={"lr": 1})
    claim_checkpoint_dir(cfg)
    for name in ("step-3", ".tmp-step-6"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "trainer_state.json").write_text("{}")
    (tmp_path / ".tmp-step-6" / "model.safetensors").write_bytes(b"half a tensor")
    assert latest_checkpoint(tmp_path).name == "step-3"
    assert claim_checkpoint_dir(cfg)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fingerprint.json", "step-3"]
