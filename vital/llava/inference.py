"""Batched greedy answering of VQA questions with a Hugging Face LLaVA checkpoint.

The checkpoint is loaded the way any ``LlavaForConditionalGeneration`` is (local directory or hub id),
and each question is rendered with the checkpoint's own chat template, so the demo model and
``llava-hf/llava-1.5-13b-hf`` go through the same path.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from transformers import AutoProcessor, LlavaForConditionalGeneration

from vital.llava.conversation import cut_at_next_turn, next_turn_tag
from vital.progress import progress
from vital.shards import open_image
from vital.vqa.items import VQAItem
from vital.vqa.metrics import yes_no_reference

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in _DTYPES:
        raise ValueError(f"dtype={dtype!r}: expected auto or one of {sorted(_DTYPES)}")
    return _DTYPES[dtype]


def _check_checkpoint(model_dir: str | Path) -> str:
    name = str(model_dir)
    local = Path(name)
    # A hub id is "owner/name"; anything else (absolute, ./x, a/b/c, or an existing path) is a directory.
    looks_local = local.is_absolute() or name.startswith(".") or local.exists() or name.count("/") != 1
    if looks_local and not (local / "config.json").is_file():
        raise FileNotFoundError(f"{local}: not a Hugging Face checkpoint directory (no config.json)")
    return name


class LlavaAnswerer:
    """Loads one checkpoint once and answers any number of question lists with it."""

    def __init__(self, model_dir: str | Path, device: str = "auto", dtype: str = "auto"):
        name = _check_checkpoint(model_dir)
        self.model_id = name
        self.device = resolve_device(device)
        self.model = LlavaForConditionalGeneration.from_pretrained(
            name, dtype=resolve_dtype(dtype, self.device)
        )
        self.model.to(self.device).eval()
        self.processor = AutoProcessor.from_pretrained(name)
        if getattr(self.processor, "chat_template", None) is None:
            raise ValueError(f"{name}: the processor has no chat template (save one with the checkpoint)")
        tok = self.processor.tokenizer
        tok.padding_side = "left"  # generation continues from the right edge of every row
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        # A model that was never taught to stop (no EOS after answers) runs on into a turn of its own.
        self.next_turn = next_turn_tag(self.processor)

    def prompt(self, question: str) -> str:
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        return self.processor.apply_chat_template(messages, add_generation_prompt=True)

    @torch.no_grad()
    def _generate(self, batch: Sequence[VQAItem], max_new_tokens: int) -> list[str]:
        images = [_rgb(item) for item in batch]
        inputs = self.processor(
            images=images, text=[self.prompt(i.question) for i in batch], padding=True, return_tensors="pt"
        ).to(self.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        tok = self.processor.tokenizer
        out = self.model.generate(
            **inputs,
            do_sample=False,
            num_beams=1,
            max_new_tokens=max_new_tokens,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
            **({"stop_strings": [self.next_turn], "tokenizer": tok} if self.next_turn else {}),
        )
        new = out[:, inputs["input_ids"].shape[1] :]
        return [cut_at_next_turn(t, self.next_turn) for t in tok.batch_decode(new, skip_special_tokens=True)]

    def answer(
        self, items: Sequence[VQAItem], batch_size: int = 8, max_new_tokens: int = 16, desc: str = "answer"
    ) -> list[str]:
        """Greedy answers in the order of ``items``."""
        if batch_size < 1 or max_new_tokens < 1:
            raise ValueError(f"batch_size={batch_size} and max_new_tokens={max_new_tokens} must be >= 1")
        # Similar question lengths share a batch (less padding); answers go back to the input order.
        order = sorted(range(len(items)), key=lambda i: len(items[i].question))
        answers: list[str] = [""] * len(items)
        with progress(total=len(items), desc=desc) as bar:
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                for i, text in zip(idx, self._generate([items[i] for i in idx], max_new_tokens), strict=True):
                    answers[i] = text
                bar.update(len(idx))
        return answers

    @torch.no_grad()
    def yes_no_logprobs(self, items: Sequence[VQAItem], batch_size: int = 8) -> list[tuple[float, float]]:
        """(log p(yes), log p(no)) of each question's answer starting with that word, after its generation
        prompt: the log-likelihood of the word's tokens, summed over its spellings ("Yes", "yes").

        Order of ``items``; left padding, as ``answer``, so every continuation ends each row.
        """
        tok = self.processor.tokenizer
        out: list[tuple[float, float]] = []
        for start in range(0, len(items), batch_size):
            batch = items[start : start + batch_size]
            images = [_rgb(i) for i in batch]
            prompts = [self.prompt(i.question) for i in batch]
            sides = []
            for spellings in (("Yes", "yes"), ("No", "no")):
                per = [self._continuation_logprob(images, prompts, " " + w, tok) for w in spellings]
                sides.append(torch.logsumexp(torch.stack(per), dim=0))
            out.extend(zip(sides[0].tolist(), sides[1].tolist(), strict=True))
        return out

    def _continuation_logprob(self, images, prompts: list[str], word: str, tok) -> torch.Tensor:
        """log p(word | prompt) per row: the word's tokens, teacher-forced at the right end of each row."""
        n = [
            len(tok(p + word, add_special_tokens=False)["input_ids"])
            - len(tok(p, add_special_tokens=False)["input_ids"])
            for p in prompts
        ]
        inputs = self.processor(
            images=images, text=[p + word for p in prompts], padding=True, return_tensors="pt"
        ).to(self.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        ids = inputs["input_ids"]
        logp = torch.log_softmax(self.model(**inputs).logits[:, :-1].float(), dim=-1)
        token_lp = logp.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)  # log p of token t+1 at t
        width = token_lp.shape[1]
        return torch.stack([token_lp[r, width - k :].sum() for r, k in enumerate(n)])


def likelihood_closed_accuracy(
    items: Sequence[VQAItem], logprobs: Sequence[tuple[float, float]]
) -> dict[str, float | int | str]:
    """Closed yes/no accuracy scored by the model's likelihood of "yes" against "no".

    NOT LLaVA-Med's metric (which reads the generated answer): it asks only which of the two the model
    finds likelier, so it measures what the model knows even when its free text does not start with yes or no.
    Questions whose reference is not yes/no are skipped.
    """
    hits = []
    for item, (yes, no) in zip(items, logprobs, strict=True):
        ref = yes_no_reference(item.answer)
        if item.answer_type == "CLOSED" and ref is not None:
            hits.append(float(("yes" if yes > no else "no") == ref))
    return {
        "metric": "yes/no likelihood (not LLaVA-Med's closed-set accuracy)",
        "questions": len(hits),
        "accuracy": round(sum(hits) / len(hits), 4) if hits else None,
    }


def _rgb(item: VQAItem) -> Image.Image:
    try:
        with open_image(item.image_path) as im:
            return im.convert("RGB")
    except OSError as e:
        raise OSError(f"question {item.question_id}: cannot read image {item.image_path} ({e})") from None


def answer(
    model_dir: str | Path,
    items: Sequence[VQAItem],
    batch_size: int = 8,
    max_new_tokens: int = 16,
    device: str = "auto",
    dtype: str = "auto",
) -> list[str]:
    """Load ``model_dir`` and answer every item greedily (one string per item, in order)."""
    return LlavaAnswerer(model_dir, device=device, dtype=dtype).answer(items, batch_size, max_new_tokens)
