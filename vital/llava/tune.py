"""Stage 2: visual instruction tuning of any HF LLaVA checkpoint on a curated LLaVA JSON file.

LoRA (``peft``), QLoRA (LoRA on a 4-bit NF4 base, ``bitsandbytes``) or full fine-tuning, the vision tower
frozen or not, ``accelerate`` for devices, mixed precision, gradient accumulation and multi-GPU/DeepSpeed
(``accelerate launch``). The output directory is a complete checkpoint (LoRA merged) with the processor,
plus ``adapter/`` for LoRA and QLoRA runs.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from packaging.version import Version
from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
from transformers import BitsAndBytesConfig, LlavaForConditionalGeneration

from vital.artifacts.curated import read_curated
from vital.dvc_repo import file_md5
from vital.io import write_curve, write_json
from vital.llava.build import load_llava, set_image_aspect_ratio
from vital.llava.conversation import Collator, ConversationDataset
from vital.llava.trainer import LoopConfig, LoopResult, cpu_launch, train
from vital.params import ParamsError, TrainParams

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# transformers 5 refuses older versions; it is also the first whose 4-bit layers run on the CPU.
BNB_MIN = "0.46.1"

# QLoRA quantises the language model only: the vision tower and projector stay in full precision, as in
# LLaVA's QLoRA recipe, and so does lm_head (transformers' default skip, dropped once a list is given).
# Both spellings because transformers 4.x matches "<name>." anywhere in a module's name, 5.x a prefix.
_NOT_QUANTISED = [
    "vision_tower",
    "multi_modal_projector",
    "model.vision_tower",
    "model.multi_modal_projector",
    "lm_head",
]


def under_deepspeed() -> bool:
    """Whether this process was started by ``accelerate launch`` with a DeepSpeed config."""
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() in ("true", "1")


def check_precision(tp: TrainParams, section: str = "tune") -> None:
    """Refuse precision settings that would update half-precision weights with no float32 master copy."""
    if tp.load_dtype == "float32":
        return
    half = {"bfloat16": "bf16", "float16": "fp16"}[tp.load_dtype]
    if tp.method == "full" and not under_deepspeed():
        raise ParamsError(
            f"{section}.load_dtype={tp.load_dtype} with {section}.method=full: outside DeepSpeed the optimizer "
            f"would update {tp.load_dtype} weights with no float32 master copy; use {section}.load_dtype=float32 "
            f"with {section}.mixed_precision={half}, or launch under DeepSpeed (accelerate launch --config_file "
            "configs/accelerate/zero3.yaml)"
        )
    # QLoRA's preparation puts every weight that is not 4-bit in float32, so it needs no autocast.
    if tp.method == "lora" and tp.mixed_precision != half:
        raise ParamsError(
            f"{section}.load_dtype={tp.load_dtype} needs {section}.mixed_precision={half} (got "
            f"{tp.mixed_precision}): the trained weights are kept in float32 and the frozen ones in "
            f"{tp.load_dtype}, so the forward pass must autocast"
        )


def check_method(tp: TrainParams, section: str = "tune") -> None:
    """Fail on a ``<section>.method`` this machine cannot run, before any data or model is loaded."""
    check_precision(tp, section)
    if tp.method != "qlora":
        return
    try:
        import bitsandbytes as bnb
    except ImportError:
        raise ParamsError(
            f"{section}.method=qlora needs bitsandbytes, which is not installed: pip install 'vital[qlora]'"
        ) from None
    if Version(bnb.__version__) < Version(BNB_MIN):
        raise ParamsError(
            f"{section}.method=qlora needs bitsandbytes>={BNB_MIN} (found {bnb.__version__}): "
            "pip install -U 'vital[qlora]'"
        )
    if os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE") == "3":
        raise ParamsError(
            f"{section}.method=qlora does not run under DeepSpeed ZeRO-3 (the 4-bit base is loaded whole on every "
            "GPU, and ZeRO-3 cannot shard it): launch without the ZeRO-3 config"
        )
    if not torch.cuda.is_available() and not _bnb_4bit_runs_on_cpu():
        raise ParamsError(
            f"{section}.method=qlora: no CUDA device, and bitsandbytes {bnb.__version__} cannot run 4-bit layers "
            f"on the CPU (run on a GPU, or use {section}.method=lora)"
        )


def _bnb_4bit_runs_on_cpu() -> bool:
    """Whether the installed bitsandbytes quantises an NF4 layer on the CPU and runs it forward."""
    try:
        import bitsandbytes as bnb

        layer = bnb.nn.Linear4bit(64, 64, compute_dtype=torch.float32, quant_type="nf4").to("cpu")
        layer(torch.zeros(1, 64))
        return bool(getattr(layer.weight, "bnb_quantized", False))
    except Exception:
        return False


def quantization_config(tp: TrainParams) -> BitsAndBytesConfig:
    """QLoRA's 4-bit base: NF4 with double quantisation, computing in ``tune.load_dtype``."""
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=_DTYPES[tp.load_dtype],
        llm_int8_skip_modules=_NOT_QUANTISED,
    )


def _load_kwargs(tp: TrainParams) -> dict[str, Any]:
    if tp.method != "qlora":
        return {}
    from accelerate import PartialState

    # 4-bit weights are placed when they are loaded (accelerate cannot move them later): on this
    # process's device, so each process of a multi-GPU launch holds its own copy.
    return {"quantization_config": quantization_config(tp), "device_map": {"": str(PartialState().device)}}


def lora_target_pattern(modules: list[str], freeze_vision: bool) -> str:
    """Regex for peft: LoRA on the language model's ``modules`` (and the vision tower's if it trains)."""
    names = "|".join(sorted(modules))
    scope = "language_model" if freeze_vision else "(language_model|vision_tower)"
    return rf".*{scope}.*\.({names})"


# Non-reentrant checkpointing: the reentrant kind backpropagates nothing when no input requires grad
# (frozen embeddings under LoRA).
_CHECKPOINTING = {"use_reentrant": False}


def prepare_model(model: LlavaForConditionalGeneration, tp: TrainParams) -> torch.nn.Module:
    """Freeze/wrap the model for ``tp.method``; the projector always trains (as in LLaVA).

    LoRA and QLoRA keep the trainable weights in float32 whatever ``tp.load_dtype`` (the master weights AdamW
    updates; the forward autocasts). Full fine-tuning in half precision leaves that to DeepSpeed.
    """
    if tp.gradient_checkpointing:
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5 renamed it
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=_CHECKPOINTING)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=_CHECKPOINTING)
        model.config.use_cache = False
    if tp.method == "full":
        model.requires_grad_(True)
        if tp.freeze_vision:
            model.model.vision_tower.requires_grad_(False)
        return model  # half-precision full fine-tuning runs only under DeepSpeed (check_precision)
    if tp.method == "qlora":
        # Freezes the base and upcasts its non-4-bit weights to fp32; checkpointing as tp says.
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=tp.gradient_checkpointing,
            gradient_checkpointing_kwargs=_CHECKPOINTING,
        )
    names = [f"language_model.{n}" for n, _ in model.model.language_model.named_modules()] + ["lm_head"]
    unknown = [m for m in tp.lora.modules_to_save if not any(n == m or n.endswith(f".{m}") for n in names)]
    if unknown:
        raise ValueError(f"tune.lora.modules_to_save={unknown} names no module of the language model")
    config = LoraConfig(
        r=tp.lora.r,
        lora_alpha=tp.lora.alpha,
        lora_dropout=tp.lora.dropout,
        target_modules=lora_target_pattern(tp.lora.target_modules, tp.freeze_vision),
        modules_to_save=["multi_modal_projector", *tp.lora.modules_to_save],
        bias="none",
    )
    missing = f"tune.lora.target_modules={tp.lora.target_modules} matched no module of the model"
    try:
        peft_model = get_peft_model(model, config)
    except ValueError as e:
        if "No modules were targeted" in str(e):
            raise ValueError(missing) from None
        raise
    if not any("lora_" in n for n, _ in peft_model.named_parameters()):
        raise ValueError(missing)
    _trainable_to_float32(peft_model)
    return peft_model


def _trainable_to_float32(model: torch.nn.Module) -> None:
    for p in model.parameters():
        if p.requires_grad and p.dtype in (torch.bfloat16, torch.float16):
            p.data = p.data.float()


def trainable_dtypes(model: torch.nn.Module) -> list[str]:
    """The dtypes of the trainable weights (``["float32"]`` for LoRA and QLoRA once ``prepare_model`` ran)."""
    return sorted({str(p.dtype).removeprefix("torch.") for p in model.parameters() if p.requires_grad})


def is_main_process() -> bool:
    """True on the process that should write shared outputs (always, without ``accelerate launch``)."""
    from accelerate import PartialState

    return PartialState(cpu=cpu_launch()).is_main_process


def count_params(model: torch.nn.Module) -> tuple[int, int]:
    """Trainable and total parameters; a 4-bit weight counts as its unquantised shape, not its packed bytes."""

    def numel(p: torch.Tensor) -> int:
        state = getattr(p, "quant_state", None)
        return state.shape.numel() if state is not None else p.numel()

    trainable = sum(numel(p) for p in model.parameters() if p.requires_grad)
    return trainable, sum(numel(p) for p in model.parameters())


def _save_outputs(model, accelerator, processor, base: str, out: Path, tp: TrainParams) -> None:
    """Write the merged checkpoint (+ adapter) with weights gathered from every process."""
    state = accelerator.get_state_dict(model)
    unwrapped = accelerator.unwrap_model(model)
    if out.exists() and accelerator.is_main_process:
        shutil.rmtree(out)
    accelerator.wait_for_everyone()
    if tp.method == "full":
        unwrapped.save_pretrained(out, state_dict=state, is_main_process=accelerator.is_main_process)
    else:
        unwrapped.save_pretrained(
            out / "adapter", state_dict=state, is_main_process=accelerator.is_main_process
        )
    if accelerator.is_main_process:
        if tp.method != "full":
            # Merge from what was saved, on one process: the adapter on disk is what the model is made of.
            # QLoRA too merges into the base as stored (unquantised, in load_dtype), not into its 4-bit copy.
            merge_adapter(base, out / "adapter", out, dtype=_DTYPES[tp.load_dtype])
        processor.save_pretrained(out)
    accelerator.wait_for_everyone()


def merge_adapter(base: str | Path, adapter: Path, out: Path, dtype: torch.dtype = torch.float32) -> Path:
    """Load ``base``, apply the LoRA ``adapter``, merge and save the full model to ``out``."""
    model = LlavaForConditionalGeneration.from_pretrained(str(base), dtype=dtype)
    merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    merged.save_pretrained(out)
    return out


def run(
    base: str | Path,
    data: Path,
    image_root: Path,
    out: Path,
    tp: TrainParams,
    checkpoint_dir: Path,
    metrics_path: Path | None = None,
    curve_path: Path | None = None,
    on_step: Callable[[int, float], None] | None = None,
    section: str = "tune",
) -> dict[str, Any]:
    """Tune ``base`` (hub id or dir) on the LLaVA JSON ``data``; write the checkpoint to ``out``.

    ``section`` is the params section ``tp`` came from, for error messages (``tune`` or ``finetune``).
    """
    check_method(tp, section)
    data, out = Path(data), Path(out)
    records = read_curated(data)
    torch.manual_seed(tp.seed)
    model, processor = load_llava(base, dtype=_DTYPES[tp.load_dtype], **_load_kwargs(tp))
    # saved with the checkpoint, so evaluation preprocesses images as training did
    set_image_aspect_ratio(processor, tp.image_aspect_ratio)
    dataset = ConversationDataset(records, processor, image_root, tp.max_length, source=str(data))
    model = prepare_model(model, tp)
    trainable, total = count_params(model)
    dtypes = trainable_dtypes(model)
    cfg = LoopConfig(
        checkpoint_dir=Path(checkpoint_dir),
        epochs=tp.epochs,
        max_steps=tp.max_steps,
        batch_size=tp.batch_size,
        grad_accum=tp.grad_accum,
        lr=tp.lr,
        lr_by_name={} if tp.projector_lr is None else {"multi_modal_projector": tp.projector_lr},
        mixed_precision=tp.mixed_precision,
        checkpoint_every=tp.checkpoint_every,
        seed=tp.seed,
        desc=f"tune {data.stem}",
        fingerprint={"base": str(base), "data_md5": file_md5(data), "params": tp.model_dump()},
    )
    model, result, accelerator = train(
        model, dataset, Collator(processor.tokenizer.pad_token_id), cfg, on_step
    )
    _save_outputs(model, accelerator, processor, str(base), out, tp)
    metrics = _metrics(tp, dataset, result, trainable, total, records)
    metrics["trainable_dtypes"] = dtypes
    metrics["global_batch"] = tp.batch_size * tp.grad_accum * accelerator.num_processes
    if accelerator.is_main_process:
        if curve_path is not None:
            write_curve(curve_path, result.losses)
        if metrics_path is not None:
            write_json(metrics_path, metrics)
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
    return metrics


def _metrics(tp, dataset, result: LoopResult, trainable: int, total: int, records: list) -> dict[str, Any]:
    return {
        "method": tp.method,
        "freeze_vision": tp.freeze_vision,
        "gradient_checkpointing": tp.gradient_checkpointing,
        "image_aspect_ratio": tp.image_aspect_ratio,
        "lr": tp.lr,
        "projector_lr": tp.lr if tp.projector_lr is None else tp.projector_lr,
        "seed": tp.seed,
        "records": len(records),
        "examples": len(dataset),
        **dataset.problems.metrics(),
        "target_tokens_per_epoch": dataset.n_target_tokens,
        "trainable_params": trainable,
        "total_params": total,
        "steps": result.steps,
        "resumed_from": result.resumed_from,
        "first_loss": round(result.losses[0][1], 6) if result.losses else None,
        "final_loss": round(result.final_loss, 6),
        "tokens": result.tokens,
        "tokens_per_s": round(result.tokens_per_s, 1),
        "train_wall_s": round(result.wall_s, 2),
    }
