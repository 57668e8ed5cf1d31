"""LLaVA conversations -> tokens: template, image expansion, loss only on assistant turns."""

from __future__ import annotations

import pytest

from vital.llava.build import load_llava
from vital.llava.conversation import (
    IGNORE_INDEX,
    Collator,
    ConversationDataset,
    ConversationError,
    encode,
    llava_to_messages,
    num_image_tokens,
)
from vital.llava.testing import side_records, tiny_base

TWO_ROUNDS = [
    {"from": "human", "value": "<image>\nWhich side is the lesion on?"},
    {"from": "gpt", "value": "left"},
    {"from": "human", "value": "Describe the image concisely."},
    {"from": "gpt", "value": "A lesion on the right."},
]


@pytest.fixture(scope="module")
def processor(tmp_path_factory):
    root = tmp_path_factory.mktemp("conv")
    tiny_base(root / "base", width=32, patch_size=16)
    return load_llava(root / "base")[1]


def _targets(processor, enc) -> list[str]:
    """Decoded runs of consecutive target tokens."""
    runs, cur = [], []
    for t, lab in zip(enc.input_ids, enc.labels, strict=True):
        if lab != IGNORE_INDEX:
            assert lab == t
            cur.append(t)
        elif cur:
            runs.append(processor.tokenizer.decode(cur))
            cur = []
    if cur:
        runs.append(processor.tokenizer.decode(cur))
    return runs


def test_messages_from_llava_json():
    msgs = llava_to_messages(TWO_ROUNDS)
    assert msgs[0] == {
        "role": "user",
        "content": [{"type": "image"}, {"type": "text", "text": "Which side is the lesion on?"}],
    }
    assert [m["role"] for m in msgs] == ["user", "assistant", "user", "assistant"]
    # A trailing human turn has no answer to learn: it is dropped.
    assert len(llava_to_messages(TWO_ROUNDS[:3])) == 2


@pytest.mark.parametrize(
    "conv, match",
    [
        ([], "empty conversation"),
        ([{"from": "gpt", "value": "x"}], "expected a user turn"),
        ([{"from": "human", "value": "no placeholder"}, {"from": "gpt", "value": "x"}], "no <image>"),
        ([{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "  "}], "empty value"),
        ([{"from": "human", "value": "<image>\nq"}, {"from": "bot", "value": "x"}], "human or gpt"),
        (
            TWO_ROUNDS[:2] + [{"from": "human", "value": "<image> again"}, {"from": "gpt", "value": "x"}],
            "outside",
        ),
    ],
)
def test_bad_conversations_are_named(conv, match):
    with pytest.raises(ConversationError, match=match):
        llava_to_messages(conv)


def test_loss_only_on_assistant_turns(processor):
    enc = encode(processor, llava_to_messages(TWO_ROUNDS), max_length=512)
    assert _targets(processor, enc) == [" left</s>", " A lesion on the right.</s>"]
    image_id = processor.tokenizer.image_token_id
    assert enc.input_ids.count(image_id) == num_image_tokens(processor) == 16  # (64/16)^2
    assert enc.input_ids[0] == processor.tokenizer.bos_token_id
    # The training text starts with exactly the prompt evaluation uses.
    prompt = processor.apply_chat_template(llava_to_messages(TWO_ROUNDS)[:1], add_generation_prompt=True)
    prompt_ids = processor.tokenizer(prompt)["input_ids"]
    expanded = []
    for t in prompt_ids:
        expanded.extend([t] * (num_image_tokens(processor) if t == image_id else 1))
    assert enc.input_ids[: len(expanded)] == expanded


def test_truncation_keeps_answers_or_drops_the_record(processor):
    full = encode(processor, llava_to_messages(TWO_ROUNDS), max_length=512)
    start = next(i for i, lab in enumerate(full.labels) if lab != IGNORE_INDEX)
    first_answer_end = next(i for i in range(start, len(full.labels)) if full.labels[i] == IGNORE_INDEX)
    cut = encode(processor, llava_to_messages(TWO_ROUNDS), max_length=first_answer_end)
    assert _targets(processor, cut) == [" left</s>"]
    with pytest.raises(ConversationError, match="no assistant tokens"):
        encode(processor, llava_to_messages(TWO_ROUNDS), max_length=start)
    with pytest.raises(ConversationError, match="image tokens"):
        encode(processor, llava_to_messages(TWO_ROUNDS), max_length=10)


def test_dataset_counts_problems_and_collates(processor, tmp_path):
    records = side_records(tmp_path, 3)
    records += [
        {"id": "x1", "conversations": TWO_ROUNDS},
        {"id": "x2", "image": "images/nope.png", "conversations": TWO_ROUNDS},
        {"id": "x3", "image": records[0]["image"], "conversations": TWO_ROUNDS[1:]},
    ]
    ds = ConversationDataset(records, processor, tmp_path, max_length=128, source="t.json")
    assert len(ds) == 3
    assert ds.problems.counts == {
        "no image": 1,
        "image file missing": 1,
        "expected a user turn (turns must alternate, human first)": 1,
    }
    assert any("t.json record x2" in e["where"] for e in ds.problems.examples)
    long = {"id": "long", "image": records[0]["image"], "conversations": TWO_ROUNDS}
    ds2 = ConversationDataset([records[0], long], processor, tmp_path, max_length=128)
    batch = Collator(processor.tokenizer.pad_token_id)([ds2[0], ds2[1]])
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    assert batch["pixel_values"].shape == (2, 3, 64, 64)
    short = len(ds2[0]["input_ids"])
    assert batch["attention_mask"][0, short:].sum() == 0
    assert (batch["labels"][0, short:] == IGNORE_INDEX).all()
    assert (batch["input_ids"][0, short:] == processor.tokenizer.pad_token_id).all()


def test_empty_or_corrupt_training_images_are_skipped_with_their_path(processor, tmp_path):
    records = side_records(tmp_path, 2)
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    records += [
        {"id": "e", "image": "empty.png", "conversations": TWO_ROUNDS},
        {"id": "c", "image": "corrupt.png", "conversations": TWO_ROUNDS},
    ]
    ds = ConversationDataset(records, processor, tmp_path, max_length=128, source="t.json")
    assert len(ds) == 2
    assert ds.problems.counts == {"image file is empty": 1, "image file is not a readable image": 1}
    assert any(
        "record e" in e["where"] and str(tmp_path / "empty.png") in e["where"] for e in ds.problems.examples
    )
    assert any(
        "record c" in e["where"] and str(tmp_path / "corrupt.png") in e["where"] for e in ds.problems.examples
    )
    assert all(ds[i]["pixel_values"].shape == (3, 64, 64) for i in range(len(ds)))
