"""One training loop for both LLaVA stages: accelerate, gradient accumulation, checkpoints, resume.

Order of examples is a pure function of the seed (a fixed list of micro-batches), and each checkpoint
holds model/optimizer/scheduler/RNG state plus how many micro-batches were consumed, so a run killed
after a checkpoint and restarted ends where an uninterrupted run ends.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from transformers import get_cosine_schedule_with_warmup

from vital.failures import StageFailed
from vital.progress import progress

STATE_FILE = "trainer_state.json"


@dataclass
class LoopConfig:
    checkpoint_dir: Path
    epochs: float = 1.0
    max_steps: int = -1
    batch_size: int = 16
    grad_accum: int = 1
    lr: float = 1e-3
    # parameters whose name contains a key train at its rate (LLaVA's mm_projector_lr: the projector's own)
    lr_by_name: dict[str, float] = field(default_factory=dict)
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    max_grad_norm: float = 1.0
    mixed_precision: str = "no"
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    resume: bool = True
    seed: int = 0
    desc: str = "train"
    fingerprint: dict = field(default_factory=dict)


@dataclass
class LoopResult:
    steps: int
    losses: list[tuple[int, float]] = field(default_factory=list)
    tokens: int = 0
    target_tokens: int = 0
    wall_s: float = 0.0
    resumed_from: int = 0
    session_tokens: int = 0
    session_steps: int = 0

    @property
    def tokens_per_s(self) -> float:
        """Throughput of this process's session (resumed runs count only what they trained)."""
        return self.session_tokens / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def final_loss(self) -> float:
        tail = [v for _, v in self.losses[-10:]]
        return sum(tail) / len(tail) if tail else float("nan")


def cpu_launch() -> bool:
    """Whether this is one of several processes (``accelerate launch``/torchrun) on a machine without CUDA.

    accelerate must then be told ``cpu=True`` to join the processes over gloo; otherwise each process
    trains alone on the whole data and every one of them writes the outputs.
    """
    return not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1


def micro_batches(n: int, batch_size: int, epochs: int, seed: int) -> list[list[int]]:
    """Example indices per micro-batch for ``epochs`` passes, each pass a seeded permutation."""
    out = []
    for epoch in range(epochs):
        g = torch.Generator().manual_seed(seed * 100_003 + epoch)
        perm = torch.randperm(n, generator=g).tolist()
        out.extend(perm[i : i + batch_size] for i in range(0, n, batch_size))
    return out


def plan_steps(n: int, cfg: LoopConfig, world: int) -> tuple[list[list[int]], int]:
    """Micro-batches to iterate and the number of optimizer steps they make (``max_steps`` wins)."""
    if n == 0:
        raise StageFailed("no training examples (every record was dropped; see the stage metrics)")
    per_epoch = math.ceil(n / cfg.batch_size)
    micro_per_step = cfg.grad_accum * world
    if cfg.max_steps > 0:
        epochs = math.ceil(cfg.max_steps * micro_per_step / per_epoch)
        batches = micro_batches(n, cfg.batch_size, epochs, cfg.seed)[: cfg.max_steps * micro_per_step]
    else:
        full = math.ceil(cfg.epochs)
        batches = micro_batches(n, cfg.batch_size, full, cfg.seed)[: math.ceil(cfg.epochs * per_epoch)]
    return batches, math.ceil(len(batches) / micro_per_step)


def latest_checkpoint(checkpoint_dir: Path) -> Path | None:
    """The newest complete checkpoint (a ``step-N`` dir whose state file was written last).

    A ``.tmp-step-N`` dir is a save that was killed before its rename, so it is never a candidate.
    """
    done = [p for p in Path(checkpoint_dir).glob("step-*") if (p / STATE_FILE).is_file()]
    return max(done, key=lambda p: int(p.name.split("-")[1]), default=None)


def claim_checkpoint_dir(cfg: LoopConfig) -> bool:
    """Make ``checkpoint_dir`` belong to this run's fingerprint; returns False if stale ones were wiped.

    A checkpoint left by a run with other data, base model or hyper-parameters must never be resumed.
    Half-written saves (``.tmp-step-N``, a kill during a save) are removed: they are never resumed, and a
    full fine-tune's optimizer state makes them large.
    """
    d = Path(cfg.checkpoint_dir)
    f = d / "fingerprint.json"
    wanted = json.dumps(cfg.fingerprint, sort_keys=True, default=str)
    kept = True
    if d.exists() and (not f.is_file() or f.read_text(encoding="utf-8") != wanted):
        shutil.rmtree(d)
        kept = False
    d.mkdir(parents=True, exist_ok=True)
    for tmp in d.glob(".tmp-step-*"):
        shutil.rmtree(tmp)
    f.write_text(wanted, encoding="utf-8")
    return kept


def _trainable_only(model: torch.nn.Module):
    """accelerate save hook: keep only trainable tensors (a LoRA checkpoint is the adapter, not 13B)."""
    names = {n for n, p in model.named_parameters() if p.requires_grad}

    def hook(models, weights, output_dir):
        for i, w in enumerate(weights):
            weights[i] = {k: v for k, v in w.items() if k in names}

    return hook


def _save(accelerator: Accelerator, cfg: LoopConfig, step: int, consumed: int, result: LoopResult) -> None:
    final = Path(cfg.checkpoint_dir) / f"step-{step}"
    tmp = Path(cfg.checkpoint_dir) / f".tmp-step-{step}"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        state = {
            "step": step,
            "consumed_micro_batches": consumed,
            "losses": result.losses,
            "tokens": result.tokens,
            "target_tokens": result.target_tokens,
        }
        (tmp / STATE_FILE).write_text(json.dumps(state), encoding="utf-8")
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        old = sorted(
            (p for p in Path(cfg.checkpoint_dir).glob("step-*") if p != final),
            key=lambda p: int(p.name.split("-")[1]),
        )
        for p in old[: max(0, len(old) - (cfg.keep_checkpoints - 1))]:
            shutil.rmtree(p, ignore_errors=True)
    accelerator.wait_for_everyone()


def param_groups(model: torch.nn.Module, cfg: LoopConfig) -> list[dict]:
    """The trainable parameters as optimizer groups: those matching a ``cfg.lr_by_name`` key at its rate,
    the rest at ``cfg.lr`` (a group is left out when empty)."""
    groups: dict[float, list[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            lr = next((v for k, v in cfg.lr_by_name.items() if k in name), cfg.lr)
            groups.setdefault(lr, []).append(p)
    return [{"params": ps, "lr": lr} for lr, ps in groups.items()]


def train(
    model: torch.nn.Module,
    dataset: torch.utils.data.Dataset,
    collate: Callable,
    cfg: LoopConfig,
    on_step: Callable[[int, float], None] | None = None,
) -> tuple[torch.nn.Module, LoopResult, Accelerator]:
    """Train the model's trainable parameters; returns the prepared model, the curve and the accelerator.

    The model comes back as ``accelerator.prepare`` wrapped it (DDP/DeepSpeed engine); pass it to
    ``accelerator.get_state_dict`` to gather full weights, or ``accelerator.unwrap_model`` it.
    """
    accelerator = Accelerator(
        mixed_precision=cfg.mixed_precision, gradient_accumulation_steps=cfg.grad_accum, cpu=cpu_launch()
    )
    set_seed(cfg.seed)
    batches, total_steps = plan_steps(len(dataset), cfg, accelerator.num_processes)
    # A private generator: starting an iterator must not draw from the global RNG (dropout's), or a
    # resumed run, which starts its iterator after restoring RNG state, would drift from an unbroken one.
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=batches, collate_fn=collate, generator=torch.Generator().manual_seed(cfg.seed)
    )
    if accelerator.state.deepspeed_plugin is not None:
        # Our loader has a batch sampler (no .batch_size), so DeepSpeed must be told the micro-batch size.
        accelerator.state.deepspeed_plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = cfg.batch_size
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("nothing to train: every parameter is frozen")
    optimizer = torch.optim.AdamW(param_groups(model, cfg), lr=cfg.lr, weight_decay=cfg.weight_decay)
    world = accelerator.num_processes
    scheduler = get_cosine_schedule_with_warmup(
        optimizer, int(cfg.warmup_ratio * total_steps) * world, total_steps * world
    )
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    # names as the unwrapped model has them: DDP prefixes "module.", and the hook gets unwrapped weights
    accelerator.register_save_state_pre_hook(_trainable_only(accelerator.unwrap_model(model)))

    result = LoopResult(steps=0)
    consumed = 0
    if accelerator.is_main_process:
        claim_checkpoint_dir(cfg)
    accelerator.wait_for_everyone()
    ckpt = latest_checkpoint(cfg.checkpoint_dir) if cfg.resume else None
    if ckpt is not None:
        accelerator.load_state(str(ckpt), strict=False)
        state = json.loads((ckpt / STATE_FILE).read_text(encoding="utf-8"))
        result.steps = result.resumed_from = state["step"]
        consumed = state["consumed_micro_batches"]
        result.losses = [tuple(x) for x in state["losses"]]
        result.tokens, result.target_tokens = state["tokens"], state["target_tokens"]
    per_process = consumed // world
    active = accelerator.skip_first_batches(loader, per_process) if per_process else loader

    model.train()
    start = time.perf_counter()
    step_loss, step_micro = 0.0, 0
    bar = progress(total=total_steps, desc=cfg.desc, initial=result.steps)
    for batch in active:
        with accelerator.accumulate(model):
            loss = model(**batch).loss
            accelerator.backward(loss)
            if accelerator.sync_gradients and cfg.max_grad_norm > 0:
                accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
        consumed += world
        step_loss += accelerator.reduce(loss.detach().float(), reduction="mean").item()
        step_micro += 1
        seen = int(accelerator.reduce(batch["attention_mask"].sum(), reduction="sum").item())
        result.tokens += seen
        result.session_tokens += seen
        result.target_tokens += int(
            accelerator.reduce((batch["labels"] != -100).sum(), reduction="sum").item()
        )
        if not accelerator.sync_gradients:
            continue
        result.steps += 1
        result.session_steps += 1
        value = step_loss / step_micro
        result.losses.append((result.steps, value))
        step_loss, step_micro = 0.0, 0
        bar.update(1)
        bar.set_postfix(loss=f"{value:.4f}")
        if result.steps % cfg.checkpoint_every == 0 and result.steps < total_steps:
            _save(accelerator, cfg, result.steps, consumed, result)
        if on_step is not None:
            on_step(result.steps, value)
        if result.steps >= total_steps:
            break
    bar.close()
    result.wall_s = time.perf_counter() - start
    return model, result, accelerator
