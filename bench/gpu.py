"""GPU throughput and memory at the paper's shapes, with random weights (no hub download).

python bench/gpu.py [--dry] [--write docs/scaling.md] [--steps 5] [--batch 1] [--seq 2048]

1. LoRA steps of a llava-1.5-7b-shaped model: CLIP ViT-L/14 at 336 px (1024 wide, 24 layers, 576 image
   tokens, features from the second-to-last layer), a 2-layer GELU projector, a Llama-2-7B language model
   (4096 wide, 32 layers, 11008 MLP, vocab 32064); bf16, gradient checkpointing, LoRA r=128 on every linear
   layer of the language model, the projector trained, AdamW. Reports tokens/s (sequence tokens, image
   tokens included, per second of optimizer steps after one warm-up step) and peak allocated memory.
2. An embed pass at BiomedCLIP's width: a ViT-B/16 image tower at 224 px (768 wide, 12 layers), bf16,
   inference; reports images/s and peak memory.

``--dry`` runs the same code at toy sizes on the CPU (float32, no gradient checkpointing check of memory)
to prove the script works; it never writes results. ``--write`` replaces the block between the
``<!-- bench/gpu.py -->`` markers of the given Markdown file with the measured table, only on CUDA.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import time
from pathlib import Path

import torch

MARK_START, MARK_END = "<!-- bench/gpu.py -->", "<!-- /bench/gpu.py -->"


def llava_config(dry: bool):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    if dry:
        vision = CLIPVisionConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            image_size=32, patch_size=8, projection_dim=32,
        )  # fmt: skip
        text = LlamaConfig(
            hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=4, vocab_size=1024, max_position_embeddings=512,
        )  # fmt: skip
        image_tokens = (32 // 8) ** 2
    else:
        vision = CLIPVisionConfig(
            hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
            image_size=336, patch_size=14, projection_dim=768, hidden_act="quick_gelu",
        )  # fmt: skip
        text = LlamaConfig(
            hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
            num_key_value_heads=32, vocab_size=32064, max_position_embeddings=4096, rms_norm_eps=1e-5,
        )  # fmt: skip
        image_tokens = (336 // 14) ** 2
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=text.vocab_size - 64,
        projector_hidden_act="gelu",
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        image_seq_length=image_tokens,
    )
    return config, image_tokens


def _peak(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None


def lora_steps(steps: int, batch: int, seq: int, dry: bool, device: torch.device) -> dict:
    from peft import LoraConfig, get_peft_model
    from transformers import LlavaForConditionalGeneration

    dtype = torch.float32 if dry else torch.bfloat16
    config, image_tokens = llava_config(dry)
    seq = min(seq, 128) if dry else seq
    torch.manual_seed(0)
    with torch.device(device):
        model = LlavaForConditionalGeneration._from_config(config, dtype=dtype)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    lora = LoraConfig(
        r=8 if dry else 128,
        lora_alpha=16 if dry else 256,
        target_modules=r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)",
        modules_to_save=["multi_modal_projector"],
    )
    model = get_peft_model(model, lora)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    vocab, image_id = config.text_config.vocab_size, config.image_token_index
    ids = torch.randint(0, image_id, (batch, seq), device=device)
    ids[:, 1 : 1 + image_tokens] = image_id
    labels = ids.masked_fill(ids == image_id, -100)
    side = config.vision_config.image_size
    pixels = torch.randn(batch, 3, side, side, device=device, dtype=dtype)
    assert vocab > image_id
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(steps + 1):  # the first step warms up (kernels, allocator) and is not timed
        start = time.perf_counter()
        loss = model(input_ids=ids, pixel_values=pixels, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    timed = sum(times[1:])
    return {
        "what": "LoRA steps, llava-1.5-7b shape" if not dry else "LoRA steps, toy shape (dry run)",
        "dtype": str(dtype).removeprefix("torch."),
        "gradient_checkpointing": True,
        "params_total": total,
        "params_trainable": trainable,
        "batch": batch,
        "seq_tokens": seq,
        "image_tokens": image_tokens,
        "steps_timed": steps,
        "s_per_step": round(timed / steps, 3),
        "tokens_per_s": round(batch * seq * steps / timed, 1),
        "final_loss": round(float(loss.detach()), 4),
        "peak_gib": _peak(device),
    }


def embed_pass(batches: int, batch: int, dry: bool, device: torch.device) -> dict:
    from transformers import CLIPVisionConfig, CLIPVisionModel

    dtype = torch.float32 if dry else torch.bfloat16
    if dry:
        config = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                  image_size=32, patch_size=8)  # fmt: skip
        batch = min(batch, 8)
    else:  # BiomedCLIP's image tower: ViT-B/16 at 224 px
        config = CLIPVisionConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                  num_attention_heads=12, image_size=224, patch_size=16)  # fmt: skip
    with torch.device(device):
        model = CLIPVisionModel._from_config(config, dtype=dtype).eval()
    pixels = torch.randn(batch, 3, config.image_size, config.image_size, device=device, dtype=dtype)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    with torch.inference_mode():
        for _ in range(batches + 1):
            start = time.perf_counter()
            model(pixel_values=pixels).pooler_output.float().cpu()
            times.append(time.perf_counter() - start)
    timed = sum(times[1:])
    return {
        "what": "embed pass, BiomedCLIP width (ViT-B/16, 224 px)" if not dry else "embed pass, toy (dry run)",
        "dtype": str(dtype).removeprefix("torch."),
        "batch": batch,
        "batches_timed": batches,
        "images_per_s": round(batch * batches / timed, 1),
        "peak_gib": _peak(device),
    }


def table(results: dict) -> str:
    lora, emb, env = results["lora"], results["embed"], results["environment"]
    return "\n".join(
        [
            MARK_START,
            f"Measured by `bash bench/gpu.sh` on {env['device']} (torch {env['torch']}, "
            f"transformers {env['transformers']}), random weights:",
            "",
            "| run | shape | throughput | peak GPU memory |",
            "|---|---|---|---|",
            f"| {lora['what']} | batch {lora['batch']} x {lora['seq_tokens']} tokens ({lora['image_tokens']} image), "
            f"{lora['dtype']}, grad. checkpointing, LoRA ({lora['params_trainable']:,} of {lora['params_total']:,} "
            f"params) | {lora['tokens_per_s']:,} tokens/s ({lora['s_per_step']} s/step) | {lora['peak_gib']} GiB |",
            f"| {emb['what']} | batch {emb['batch']}, {emb['dtype']} | {emb['images_per_s']:,} images/s | "
            f"{emb['peak_gib']} GiB |",
            MARK_END,
        ]
    )


def write_section(path: Path, text: str) -> None:
    doc = path.read_text(encoding="utf-8")
    pattern = re.compile(re.escape(MARK_START) + r".*?" + re.escape(MARK_END), re.S)
    if not pattern.search(doc):
        raise SystemExit(f"{path}: no {MARK_START} ... {MARK_END} block to replace")
    path.write_text(pattern.sub(lambda _: text, doc), encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--dry", action="store_true", help="toy sizes on the CPU: proves the script, measures nothing"
    )
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--embed-batch", type=int, default=256)
    ap.add_argument("--embed-batches", type=int, default=10)
    ap.add_argument("--write", type=Path, default=None, help="Markdown file whose bench block to replace")
    ap.add_argument("--json", type=Path, default=None, help="also write the raw results here")
    args = ap.parse_args()
    if not args.dry and not torch.cuda.is_available():
        raise SystemExit("bench/gpu.py: no CUDA device; nothing measured (use --dry to check the script)")
    device = torch.device("cpu" if args.dry else "cuda")
    import transformers

    results = {
        "environment": {
            "device": torch.cuda.get_device_name(device)
            if device.type == "cuda"
            else platform.processor() or "cpu",
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
        "lora": lora_steps(args.steps if not args.dry else 1, args.batch, args.seq, args.dry, device),
        "embed": embed_pass(args.embed_batches if not args.dry else 1, args.embed_batch, args.dry, device),
    }
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    if args.write and not args.dry:
        write_section(args.write, table(results))


if __name__ == "__main__":
    main()
