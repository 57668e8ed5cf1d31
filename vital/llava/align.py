"""LLaVA-Med stage 1: align the vision features to the language model on figure–caption pairs.

Each figure becomes a one-turn conversation: a brief-description instruction with the image, answered by
the caption. The vision tower stays frozen; the projector is trained (LLaVA), and for the demo's randomly
initialised Llama the language model too (``align.trainable``). The result is ``models/base``.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vital.io import RecordError, read_jsonl, write_curve, write_json
from vital.params import AlignParams, Params
from vital.paths import Paths
from vital.registry import Backend, choose

_TRAIN_READS = ("models/foundation", "data/corpus")
# align.backend -> the function that makes models/base (params, paths) and what it reads
BACKENDS: dict[str, Backend] = {
    "demo": Backend("vital.demo.llava:align_stage", reads=_TRAIN_READS),
    # the sampled figures (vital.corpus_paths:align_reads), not the demo corpus
    "pretrained": Backend("vital.llava.align:train_stage"),
    "restore": Backend(
        "vital.demo.pretrained:restore_base",
        reads=("data/pretrained/base", "data/pretrained/metrics", "data/pretrained/params.json"),
    ),
}

if TYPE_CHECKING:
    import torch


def _pick(pair_id: str, options: list[str], seed: int) -> str:
    h = hashlib.sha256(f"{seed}:{pair_id}".encode()).digest()
    return options[int.from_bytes(h[:4], "big") % len(options)]


def caption_conversations(figures: Path, instructions: list[str], seed: int = 0) -> Iterator[dict[str, Any]]:
    """Figure records as LLaVA conversations (instruction + image -> caption)."""
    if not instructions:
        raise ValueError("align.instructions is empty")
    for n, rec in enumerate(read_jsonl(figures), 1):
        pair_id = rec.get("pair_id")
        if pair_id is None:
            raise RecordError(f"{figures}:{n}: figure record has no pair_id")
        caption = (rec.get("fig_caption") or "").strip()
        yield {
            "id": str(pair_id),
            "image": rec.get("image"),
            "conversations": [
                {"from": "human", "value": f"<image>\n{_pick(str(pair_id), instructions, seed)}"},
                {"from": "gpt", "value": caption},
            ],
        }


def set_trainable(model: torch.nn.Module, trainable: str) -> int:
    """Freeze the vision tower (and the LM unless ``projector_lm``); returns the trainable count."""
    model.requires_grad_(False)
    model.model.multi_modal_projector.requires_grad_(True)
    if trainable == "projector_lm":
        model.model.language_model.requires_grad_(True)
        model.lm_head.requires_grad_(True)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _record_pretrained(
    ap: AlignParams, out: Path, metrics_path: Path | None, curve_path: Path | None
) -> dict[str, Any]:
    """An already aligned checkpoint (e.g. llava-hf/llava-1.5-13b-hf): record it instead of copying its weights."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    reason = (
        f"align.steps is 0: {ap.model} is used as it is (LLaVA-1.5 checkpoints are already aligned on general "
        "image-caption pairs); LLaVA-Med's stage 1 on the sampled biomedical figure captions is not run. "
        "Set align.steps > 0 to run it"
    )
    from vital.hub import resolve

    hub = resolve("align.model", ap.model, ap.model_revision)  # unknown or unreachable: one line, at once
    print(f"align: skipped: {reason}")
    record = {"backend": "pretrained", "model": ap.model, "aligned_here": False, "skipped": reason}
    if hub.repo is not None:
        record["hub"] = hub.record()
    write_json(out / "checkpoint.json", record)
    if metrics_path is not None:
        write_json(metrics_path, record)
    if curve_path is not None:
        write_curve(curve_path, [])  # nothing trained, but dvc.yaml declares the curve
    return record


def run(
    foundation_dir: Path,
    figures: Path,
    corpus_root: Path,
    out: Path,
    ap: AlignParams,
    checkpoint_dir: Path,
    metrics_path: Path | None = None,
    curve_path: Path | None = None,
    build_base: Callable[[Path, AlignParams], tuple[Any, Any]] | None = None,
) -> dict[str, Any]:
    """Build (demo: ``build_base(foundation_dir, ap)``, vital.demo.llava's) or load (pretrained:
    ``align.model``) the base LLaVA, align it on captions, save it to ``out``."""
    if ap.backend == "pretrained" and ap.steps == 0:
        return _record_pretrained(ap, out, metrics_path, curve_path)
    # torch, transformers and peft only when a model is built or trained (a record takes no 10 s of imports)
    from vital.llava.build import load_llava, save_llava
    from vital.llava.conversation import Collator, ConversationDataset
    from vital.llava.trainer import LoopConfig, train

    hub = None
    if ap.backend == "demo":
        if build_base is None:
            raise ValueError("align.backend demo: the base is built by vital.demo.llava (pass build_base)")
        model, processor = build_base(foundation_dir, ap)
    else:
        from vital.hub import pinned

        source, hub = pinned("align.model", ap.model, ap.model_revision)
        model, processor = load_llava(source)
    metrics: dict[str, Any] = {"backend": ap.backend, "trainable": ap.trainable, "captions": str(figures)}
    if hub is not None and hub.repo is not None:
        metrics["hub"] = hub.record()
    if ap.steps > 0:
        data = ConversationDataset(
            caption_conversations(figures, ap.instructions, ap.seed),
            processor,
            corpus_root,
            ap.max_length,
            source=str(figures),
        )
        metrics.update(examples=len(data), **data.problems.metrics())
        metrics["trainable_params"] = set_trainable(model, ap.trainable)
        cfg = LoopConfig(
            checkpoint_dir=checkpoint_dir,
            max_steps=ap.steps,
            batch_size=ap.batch_size,
            lr=ap.lr,
            checkpoint_every=max(1, ap.steps // 4),
            seed=ap.seed,
            desc="align",
            fingerprint={"stage": "align", "params": ap.model_dump(), "examples": len(data)},
        )
        model, result, accelerator = train(model, data, Collator(processor.tokenizer.pad_token_id), cfg)
        model = accelerator.unwrap_model(model)
        metrics.update(
            steps=result.steps,
            final_loss=round(result.final_loss, 5),
            first_loss=round(result.losses[0][1], 5) if result.losses else None,
            tokens_per_s=round(result.tokens_per_s, 1),
            train_wall_s=round(result.wall_s, 2),
            resumed_from=result.resumed_from,
        )
        if curve_path is not None:
            write_curve(curve_path, result.losses)
    model.requires_grad_(False)
    save_llava(model.eval(), processor, out)
    shutil.rmtree(checkpoint_dir, ignore_errors=True)
    if metrics_path is not None:
        write_json(metrics_path, metrics)
    return metrics


def run_stage(p: Params, paths: Paths) -> dict[str, Any]:
    """The align stage: ``models/base`` from ``models/foundation`` (demo), the recorded checkpoint
    (pretrained) or the stored demo checkpoint (restore)."""
    return choose(BACKENDS, p.align.backend, "align.backend").load()(p.align, paths)


def train_stage(ap: AlignParams, paths: Paths) -> dict[str, Any]:
    """pretrained: ``align.model`` aligned on the sampled figures' captions, as LLaVA-Med aligns on the PMC
    figure-caption pairs of its instruction data (the demo's backend is vital.demo.llava:align_stage)."""
    return run(
        foundation_dir=paths.foundation,
        figures=paths.sample,
        corpus_root=paths.corpus,
        out=paths.base_model,
        ap=ap,
        checkpoint_dir=paths.root / ".vital" / "checkpoints" / "align",
        curve_path=paths.plots / "align_loss.csv",
    )
