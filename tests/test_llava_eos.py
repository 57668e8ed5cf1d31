"""A llava-hf 1.5 checkpoint's chat template ends an assistant turn with "{answer} ", no EOS: training must
still supervise the answer plus EOS and nothing of the next turn, and generation must stop at the next
"USER:" a model runs on into.

The checkpoint is built here: a Llama-style tokenizer saved with ``save_pretrained`` and the chat template
llava-hf/llava-1.5-7b-hf ships (vital.llava.testing.LLAVA_HF_15_CHAT_TEMPLATE).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vital.llava.build import load_llava
from vital.llava.conversation import IGNORE_INDEX, encode, llava_to_messages, next_turn_tag
from vital.llava.inference import LlavaAnswerer
from vital.llava.testing import lesion_image, llava_hf_style_base
from vital.vqa.items import VQAItem

TWO_ROUNDS = [
    {"from": "human", "value": "<image>\nIs there a mass?"},
    {"from": "gpt", "value": "Yes."},
    {"from": "human", "value": "Which side?"},
    {"from": "gpt", "value": "The left."},
]


@pytest.fixture(scope="module")
def hf_base(tmp_path_factory):
    return llava_hf_style_base(tmp_path_factory.mktemp("llava_hf") / "base")


@pytest.fixture(scope="module")
def processor(hf_base):
    return load_llava(hf_base)[1]


def _target_runs(enc) -> list[list[int]]:
    runs, cur = [], []
    for t, lab in zip(enc.input_ids, enc.labels, strict=True):
        if lab != IGNORE_INDEX:
            assert lab == t
            cur.append(t)
        elif cur:
            runs.append(cur)
            cur = []
    return runs + ([cur] if cur else [])


def test_the_fixture_renders_turns_as_llava_hf_does_without_eos(processor):
    msgs = llava_to_messages(TWO_ROUNDS)
    text = processor.apply_chat_template(msgs, tokenize=False)
    assert text == "USER: <image>\nIs there a mass? ASSISTANT: Yes. USER: Which side? ASSISTANT: The left. "
    assert processor.tokenizer.eos_token not in text
    assert processor.tokenizer("x")["input_ids"][0] == processor.tokenizer.bos_token_id


def test_labels_are_each_answer_plus_eos_and_no_next_turn_token(processor):
    tok = processor.tokenizer
    enc = encode(processor, llava_to_messages(TWO_ROUNDS), max_length=512)
    runs = _target_runs(enc)
    assert [tok.decode(r[:-1]).strip() for r in runs] == ["Yes.", "The left."]
    assert [r[-1] for r in runs] == [tok.eos_token_id, tok.eos_token_id]
    targets = [t for r in runs for t in r]
    assert not any("USER" in tok.convert_ids_to_tokens(t) for t in targets)
    # The next turn's tag is still in the input, right after the EOS, just not a target.
    eos_at = enc.input_ids.index(tok.eos_token_id)
    assert tok.decode(enc.input_ids[eos_at + 1 : eos_at + 3]).startswith("USER")
    assert enc.labels[eos_at + 1] == IGNORE_INDEX
    # Training text begins with exactly the prompt evaluation renders.
    prompt = processor.apply_chat_template(llava_to_messages(TWO_ROUNDS)[:1], add_generation_prompt=True)
    prompt_ids = [t for t in tok(prompt)["input_ids"] if t != tok.image_token_id]
    assert [t for t in enc.input_ids if t != tok.image_token_id][: len(prompt_ids)] == prompt_ids


def test_next_turn_tag_of_llava_hf_template(processor):
    assert next_turn_tag(processor) == "USER:"


def test_generation_is_cut_at_the_next_role_tag(hf_base, processor, tmp_path):
    """A model trained on the template's text (no EOS, as main trained) runs on into "USER: ..."."""
    model, _ = load_llava(hf_base)
    image = lesion_image("left", np.random.default_rng(0), 32)
    image.save(tmp_path / "x.png")
    text = processor.apply_chat_template(llava_to_messages(TWO_ROUNDS), tokenize=False)
    inputs = processor(images=[image], text=[text], return_tensors="pt")
    labels = inputs["input_ids"].masked_fill(inputs["input_ids"] == processor.tokenizer.image_token_id, -100)
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(60):
        loss = model(**inputs, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval().save_pretrained(tmp_path / "ran_on")
    processor.save_pretrained(tmp_path / "ran_on")

    answerer = LlavaAnswerer(tmp_path / "ran_on", device="cpu")
    prompt = processor(images=[image], text=[answerer.prompt("Is there a mass?")], return_tensors="pt")
    with torch.no_grad():
        out = answerer.model.generate(**prompt, do_sample=False, max_new_tokens=12)
    raw = processor.tokenizer.decode(out[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True)
    assert raw.strip().startswith("Yes. USER:")  # what answers looked like before the cut
    item = VQAItem("q", tmp_path / "x.png", "Is there a mass?", "yes", "CLOSED")
    assert answerer.answer([item], max_new_tokens=12) == ["Yes."]
