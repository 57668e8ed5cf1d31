"""GPU memory and time of training a LLaVA checkpoint, estimated from its config and the train params.

Per GPU (every process of ``accelerate launch`` holds a full replica; no ZeRO sharding), in bytes:

- weights: every parameter at ``load_dtype``, LoRA's adapters in fp32 (4-bit NF4 for the language model's linear layers under
  qlora, 0.5 byte each; what qlora leaves unquantised is upcast to fp32 by peft's k-bit preparation);
  LoRA's ``modules_to_save`` (projector, embeddings, lm_head) are trainable copies beside the originals.
- gradients: one per trainable parameter, in the trainable parameter's dtype (LoRA adapters are fp32).
- optimizer states: AdamW keeps two (exp_avg, exp_avg_sq) per trainable parameter, same dtype.
- activations: what autograd saves for the backward pass. Per token and decoder layer, with ``h`` the
  hidden size, ``i`` the MLP's intermediate size, ``a`` heads and ``s`` the sequence length: the two
  RMSNorm inputs and outputs (4h), q, k, v and the attention output (4h), the attention probabilities and
  their pre-softmax scores (2as, eager attention), the SwiGLU MLP's gate, up, activation and product (4i):
  ``4h + 4h + 2as + 4i`` elements in the compute dtype, times layers, batch and sequence; plus the logits
  (``vocab`` per token, once in the compute dtype and once as fp32 for the loss). Gradient checkpointing
  (qlora turns it on) keeps only each layer's input (``h``) and one layer's full set. A frozen vision tower
  saves nothing.

tests/test_memory.py checks the weights, gradients and optimizer terms exactly, and the activation term
against the bytes autograd actually saves for the tiny model (torch's saved-tensor hooks).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

from vital.params import TrainParams

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
NF4_BYTES = 0.5
GIB = 2**30


@dataclass(frozen=True)
class LlavaShape:
    """The sizes of a LLaVA checkpoint the estimate needs (from its config, no weights loaded)."""

    total: int  # every parameter
    vision: int  # vision tower
    projector: int
    lm_linear: int  # the language model's decoder linear layers (what qlora quantises)
    embeddings: int  # embed_tokens + lm_head (tied counts once)
    lora_per_rank: dict[str, int]  # target module name -> sum of (in + out) over the decoder's layers
    layers: int
    hidden: int
    intermediate: int
    heads: int
    vocab: int
    image_tokens: int

    def lora_params(self, targets: list[str], r: int) -> int:
        return r * sum(self.lora_per_rank.get(t, 0) for t in targets)


def llava_shape(config) -> LlavaShape:
    """Count a ``LlavaConfig``'s parameters on the meta device (instant, even for 13B)."""
    import torch
    from transformers import LlavaForConditionalGeneration

    with torch.device("meta"):
        model = LlavaForConditionalGeneration(config)
    lm = model.model.language_model
    tc, vc = config.text_config, config.vision_config
    per_rank: dict[str, int] = {}
    lm_linear = 0
    for name, mod in lm.named_modules():
        if isinstance(mod, torch.nn.Linear):
            lm_linear += mod.weight.numel()
            leaf = name.rsplit(".", 1)[-1]
            per_rank[leaf] = per_rank.get(leaf, 0) + mod.in_features + mod.out_features
    numel = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    embeddings = numel(lm.embed_tokens) + (
        0 if config.tie_word_embeddings or tc.tie_word_embeddings else numel(model.lm_head)
    )
    return LlavaShape(
        total=numel(model),
        vision=numel(model.model.vision_tower),
        projector=numel(model.model.multi_modal_projector),
        lm_linear=lm_linear,
        embeddings=embeddings,
        lora_per_rank=per_rank,
        layers=tc.num_hidden_layers,
        hidden=tc.hidden_size,
        intermediate=tc.intermediate_size,
        heads=tc.num_attention_heads,
        vocab=tc.vocab_size,
        image_tokens=(vc.image_size // vc.patch_size) ** 2,
    )


def load_shape(spec: str, revision: str | None = None, root: Path = Path(".")) -> LlavaShape:
    """The shape of a local checkpoint dir or a hub id (its config.json only; cached or downloaded)."""
    from transformers import AutoConfig

    local = root / spec
    source = str(local) if local.is_dir() else spec
    return llava_shape(AutoConfig.from_pretrained(source, revision=None if local.is_dir() else revision))


def trainable(shape: LlavaShape, tp: TrainParams) -> int:
    if tp.method == "full":
        return shape.total - (shape.vision if tp.freeze_vision else 0)
    saved = shape.projector + (shape.embeddings if tp.lora.modules_to_save else 0)
    return shape.lora_params(tp.lora.target_modules, tp.lora.r) + saved


def train_memory(shape: LlavaShape, tp: TrainParams, seq_len: int | None = None) -> dict:
    """Bytes per GPU of one training process, by term (see the module's docstring)."""
    s = seq_len or tp.max_length
    b = tp.batch_size
    w = DTYPE_BYTES[tp.load_dtype]
    compute = 2 if tp.mixed_precision in ("bf16", "fp16") else w
    t = trainable(shape, tp)
    if tp.method == "qlora":
        weights = shape.lm_linear * NF4_BYTES + (shape.total - shape.lm_linear) * 4
    else:
        weights = shape.total * w
    if tp.method == "full":
        state_bytes = w
    else:  # adapters in fp32; modules_to_save copies at the base's dtype (qlora: upcast to fp32)
        copies = shape.projector + (shape.embeddings if tp.lora.modules_to_save else 0)
        weights += copies * (4 if tp.method == "qlora" else w) + (t - copies) * 4
        state_bytes = 4
    h, i, a, layers = shape.hidden, shape.intermediate, shape.heads, shape.layers
    per_layer_token = 8 * h + 4 * i + 2 * a * s
    if tp.method == "qlora":  # gradient checkpointing: each layer's input, plus one layer recomputed
        layer_elems = b * s * (layers * h + per_layer_token)
    else:
        layer_elems = b * s * layers * per_layer_token
    logits = b * s * shape.vocab * (compute + 4)
    activations = layer_elems * compute + logits
    terms = {
        "weights": int(weights),
        "gradients": int(t * state_bytes),
        "optimizer": int(2 * t * state_bytes),
        "activations": int(activations),
    }
    return terms | {"total": sum(terms.values()), "trainable_params": t}


def train_flops(shape: LlavaShape, tp: TrainParams, tokens: float) -> float:
    """Forward 2 FLOPs per parameter and token; backward 2 more for the activations' gradients, and 2 for the
    weights' gradients when every weight trains (full). The vision tower runs forward on the image tokens."""
    lm = shape.total - shape.vision
    per_token = (6 if tp.method == "full" else 4) * lm
    return per_token * tokens


@dataclass(frozen=True)
class TrainPlan:
    model: str
    method: str
    runs: int  # tunes (subsets x seeds) or fine-tunes (models x sets)
    examples: int  # per run
    steps: int  # per run, per process
    tokens: float  # all runs
    gpu_hours: float
    memory_gib: float  # per GPU
    memory_terms_gib: dict

    def to_dict(self) -> dict:
        return asdict(self)


def plan_training(
    model: str,
    shape: LlavaShape,
    tp: TrainParams,
    examples: int,
    runs: int,
    gpus: int,
    gpu_tflops: float,
    mfu: float,
) -> TrainPlan:
    """GPU-hours over ``runs`` trainings of ``examples`` each: tokens at ``max_length`` per example (an upper
    bound; images take ``image_tokens`` of them), FLOPs at ``mfu`` of ``gpu_tflops`` per GPU."""
    seq = tp.max_length
    per_step = tp.batch_size * tp.grad_accum * gpus
    steps = math.ceil(examples * tp.epochs / per_step) if examples else 0
    if tp.max_steps > 0:
        steps = min(steps, tp.max_steps)
    tokens = steps * per_step * seq * runs
    seconds = train_flops(shape, tp, tokens) / (gpu_tflops * 1e12 * mfu * gpus)
    mem = train_memory(shape, tp)
    terms = {k: round(v / GIB, 2) for k, v in mem.items() if k not in ("total", "trainable_params")}
    return TrainPlan(
        model=model,
        method=tp.method,
        runs=runs,
        examples=examples,
        steps=steps,
        tokens=tokens,
        gpu_hours=float(f"{seconds * gpus / 3600:.3g}"),
        memory_gib=round(mem["total"] / GIB, 2),
        memory_terms_gib=terms,
    )


CLIP_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


def checkpoint_params(spec: str, revision: str | None = None, root: Path = Path(".")) -> int:
    """Parameters of an open_clip checkpoint (a local dir or ``hf-hub:<id>``) from its weight file's size at
    4 bytes a parameter: the hub's file listing, no weights downloaded."""
    local = root / ("models/foundation/clip" if spec == "foundation" else spec)
    if not spec.startswith("hf-hub:") and not local.is_dir():
        raise FileNotFoundError(f"{local}: no open_clip checkpoint there yet (a stage writes it, or a typo)")
    if local.is_dir():
        sizes = {f: (local / f).stat().st_size for f in CLIP_WEIGHT_FILES if (local / f).is_file()}
    else:
        from huggingface_hub import HfApi

        repo = spec.removeprefix("hf-hub:")
        info = HfApi().model_info(repo, revision=revision, files_metadata=True, timeout=10)
        sizes = {s.rfilename: s.size for s in info.siblings or [] if s.rfilename in CLIP_WEIGHT_FILES}
    if not sizes:
        raise FileNotFoundError(f"{spec}: none of {', '.join(CLIP_WEIGHT_FILES)}")
    return int(next(iter(sizes.values()))) // 4
