"""LLaVA conversations -> model inputs, with the loss on assistant turns only.

The prompt text comes from the processor's own chat template (the one saved with the checkpoint), so a
model is trained on exactly the format ``processor.apply_chat_template(..., add_generation_prompt=True)``
gives at evaluation. Assistant spans are found by rendering the conversation turn by turn: the text added
by each assistant message after the generation prompt holds the answer.

What is supervised is the answer and EOS, as LLaVA's ``preprocess_v1`` does (``... ASSISTANT: {a}</s>``),
whatever the template puts after the answer: a template that ends the turn with EOS keeps it; one that ends
it with whitespace only (llava-hf 1.5's ``{a} ``) gets EOS in place of that whitespace; any other
end-of-turn text follows an inserted EOS, unsupervised. The next turn's role tokens are never targets.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vital.drops import Drops
from vital.images import check_image
from vital.shards import image_exists, open_image

IGNORE_INDEX = -100
_ROLES = {"human": "user", "gpt": "assistant"}


class ConversationError(ValueError):
    """A record whose conversation cannot be used (the message says why)."""


def llava_to_messages(conversations: list[dict[str, Any]], has_image: bool = True) -> list[dict[str, Any]]:
    """LLaVA ``conversations`` ([{from: human|gpt, value}]) -> HF chat messages with an image part.

    The ``<image>`` placeholder is removed from the first human turn's text and becomes an image part,
    the shape evaluation prompts use: ``[{"type": "image"}, {"type": "text", "text": q}]``.
    """
    if not conversations:
        raise ConversationError("empty conversation")
    messages = []
    for i, turn in enumerate(conversations):
        role = _ROLES.get(turn.get("from", ""))
        if role is None:
            raise ConversationError(f"turn {i}: 'from' must be human or gpt, got {turn.get('from')!r}")
        expected = "user" if i % 2 == 0 else "assistant"
        if role != expected:
            raise ConversationError(
                f"turn {i}: expected a {expected} turn (turns must alternate, human first)"
            )
        value = turn.get("value")
        if not isinstance(value, str) or not value.strip():
            raise ConversationError(f"turn {i}: empty value")
        parts: list[dict[str, Any]] = []
        if i == 0 and has_image:
            if "<image>" not in value:
                raise ConversationError("first human turn has no <image> placeholder")
            parts.append({"type": "image"})
            value = value.replace("<image>", "").strip()
        elif "<image>" in value:
            raise ConversationError(f"turn {i}: <image> outside the first human turn")
        parts.append({"type": "text", "text": value})
        messages.append({"role": role, "content": parts})
    if messages[-1]["role"] != "assistant":
        messages = messages[:-1]
    if not messages:
        raise ConversationError("no assistant turn")
    return messages


def _text_of(message: dict[str, Any]) -> str:
    content = message["content"]
    if isinstance(content, str):
        return content
    return "".join(p["text"] for p in content if p.get("type") == "text")


def assistant_spans(processor, messages: list[dict[str, Any]]) -> tuple[str, list[tuple[int, int]]]:
    """The training text and the character spans to supervise: each answer plus the EOS that ends it.

    The text is the template's rendering of the whole conversation, except where a turn's end carries no
    EOS (see the module docstring).
    """
    eos = processor.tokenizer.eos_token
    if not eos:
        raise ConversationError("the tokenizer has no eos_token, so no answer can be taught to end")
    full = processor.apply_chat_template(messages, tokenize=False)
    pieces: list[str] = []
    spans: list[tuple[int, int]] = []
    length = cursor = 0  # length of the text built so far; how much of ``full`` it covers
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prompt = processor.apply_chat_template(messages[:i], add_generation_prompt=True, tokenize=False)
        upto = processor.apply_chat_template(messages[: i + 1], tokenize=False)
        if not upto.startswith(prompt):
            raise ConversationError(
                "chat template does not render the generation prompt as a prefix of the assistant turn"
            )
        if not full.startswith(upto):
            raise ConversationError("chat template renders a turn differently once later turns follow it")
        body = upto[len(prompt) :]
        answer = _text_of(m).strip()
        at = body.find(answer) if answer else -1
        # A template that rewrites the answer: supervise the whole turn but its trailing whitespace.
        answer_end = len(prompt) + (at + len(answer) if at >= 0 else len(body.rstrip()))
        head = full[cursor:answer_end]
        start = length + len(prompt) - cursor
        pieces.append(head)
        length += len(head)
        trailing = upto[answer_end:]
        k = trailing.find(eos)
        if k >= 0:  # the template ends the turn with EOS: keep it (and anything before it) as target
            kept = trailing[: k + len(eos)]
            cursor = answer_end + len(kept)
        else:
            kept = eos
            # whitespace-only turn ends (llava-hf 1.5) become EOS, as LLaVA's separator was; other text stays
            cursor = len(upto) if not trailing.strip() else answer_end
        pieces.append(kept)
        length += len(kept)
        spans.append((start, length))
    pieces.append(full[cursor:])
    return "".join(pieces), spans


def next_turn_tag(processor) -> str | None:
    """The text that opens a user turn in the processor's chat template (``"USER:"`` for LLaVA-1.5's), found
    by rendering one turn more; None if the template renders it as nothing."""
    from jinja2 import TemplateError  # what chat templates render with (transformers imports it lazily too)

    sentinel = "\x00next\x00"

    def user(text: str) -> dict[str, Any]:
        return {"role": "user", "content": [{"type": "text", "text": text}]}

    one = [user("a"), {"role": "assistant", "content": [{"type": "text", "text": "b"}]}]
    try:
        before = processor.apply_chat_template(one, tokenize=False)
        after = processor.apply_chat_template([*one, user(sentinel)], tokenize=False)
    except (TemplateError, ValueError):  # a single-turn template (e.g. one that requires an image)
        return None
    if not after.startswith(before) or sentinel not in after:
        return None
    return after[len(before) :].split(sentinel, 1)[0].strip() or None


def cut_at_next_turn(text: str, tag: str | None) -> str:
    """A generated answer up to where the model starts writing the next user turn itself."""
    if tag and tag in text:
        text = text[: text.index(tag)]
    return text.strip()


def num_image_tokens(processor) -> int:
    """How many placeholder tokens one image expands to (the processor's own rule)."""
    crop = processor.image_processor.crop_size
    patch = processor.patch_size
    n = (crop["height"] // patch) * (crop["width"] // patch) + processor.num_additional_image_tokens
    return n - 1 if processor.vision_feature_select_strategy == "default" else n


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]


def encode(processor, messages: list[dict[str, Any]], max_length: int) -> Encoded:
    """Token ids with each image placeholder expanded, and labels masked outside assistant turns."""
    tok = processor.tokenizer
    text, spans = assistant_spans(processor, messages)
    enc = tok(text, return_offsets_mapping=True, add_special_tokens=True)
    image_id = tok.convert_tokens_to_ids(processor.image_token)
    n_img = num_image_tokens(processor)
    ids: list[int] = []
    labels: list[int] = []
    for tid, (start, end) in zip(enc["input_ids"], enc["offset_mapping"], strict=True):
        if tid == image_id:
            ids.extend([image_id] * n_img)
            labels.extend([IGNORE_INDEX] * n_img)
            continue
        target = end > start and any(a <= start < b for a, b in spans)
        ids.append(tid)
        labels.append(tid if target else IGNORE_INDEX)
    if len(ids) > max_length:
        last_image = max((i for i, t in enumerate(ids) if t == image_id), default=-1)
        if last_image >= max_length:
            raise ConversationError(f"image tokens reach past max_length={max_length}")
        ids, labels = ids[:max_length], labels[:max_length]
    if all(t == IGNORE_INDEX for t in labels):
        raise ConversationError(f"no assistant tokens within max_length={max_length}")
    return Encoded(ids, labels)


def _reason(err: Exception) -> str:
    msg = str(err)
    return msg.split(": ", 1)[1] if msg.startswith("turn ") else msg


class ConversationDataset(torch.utils.data.Dataset):
    """Encoded (image, conversation) examples; images are loaded and preprocessed once, on first use."""

    def __init__(
        self,
        records: Iterable[dict[str, Any]],
        processor,
        image_root: Path,
        max_length: int,
        source: str = "records",
    ):
        self.processor = processor
        self.image_root = Path(image_root)
        self.items: list[tuple[str, Path, Encoded]] = []
        self.problems = Drops(listed=20)
        self._pixels: dict[int, torch.Tensor] = {}
        for n, rec in enumerate(records):
            rid = str(rec.get("id", n))
            where = f"{source} record {rid}"
            image = rec.get("image")
            if not image:
                self.problems.add("no image", where)
                continue
            path = self.image_root / image
            if not image_exists(path):
                self.problems.add("image file missing", f"{where} ({path})")
                continue
            bad = check_image(path)  # empty or corrupt: skipped here, not a traceback mid-training
            if bad is not None:
                self.problems.add(bad.rsplit(": ", 1)[0].split(" (")[0], f"{where} ({path})")
                continue
            try:
                enc = encode(processor, llava_to_messages(rec.get("conversations") or []), max_length)
            except ConversationError as e:
                self.problems.add(_reason(e), where)
                continue
            self.items.append((rid, path, enc))

    def __len__(self) -> int:
        return len(self.items)

    def pixels(self, i: int) -> torch.Tensor:
        if i not in self._pixels:
            with open_image(self.items[i][1]) as im:
                px = self.processor.image_processor(images=[im.convert("RGB")], return_tensors="pt")
            self._pixels[i] = px["pixel_values"][0]
        return self._pixels[i]

    def __getitem__(self, i: int) -> dict[str, Any]:
        _, _, enc = self.items[i]
        return {"input_ids": enc.input_ids, "labels": enc.labels, "pixel_values": self.pixels(i)}

    @property
    def n_target_tokens(self) -> int:
        return sum(sum(1 for t in e.labels if t != IGNORE_INDEX) for _, _, e in self.items)


class Collator:
    """Right-pads a batch of encoded examples; padding is masked from attention and loss."""

    def __init__(self, pad_token_id: int):
        self.pad = pad_token_id

    def __call__(self, batch: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(b["input_ids"]) for b in batch)
        ids = torch.full((len(batch), width), self.pad, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, b in enumerate(batch):
            n = len(b["input_ids"])
            ids[i, :n] = torch.tensor(b["input_ids"])
            labels[i, :n] = torch.tensor(b["labels"])
            mask[i, :n] = 1
        pixels = torch.stack([b["pixel_values"] for b in batch])
        return {"input_ids": ids, "labels": labels, "attention_mask": mask, "pixel_values": pixels}
