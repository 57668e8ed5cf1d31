"""Greedy batched answering through the same from_pretrained path a real LLaVA checkpoint takes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)

from vital.llava.inference import LlavaAnswerer, answer
from vital.vqa.items import VQAItem

# LLaVA-1.5 style: "USER: <image>\n{question} ASSISTANT:"
CHAT_TEMPLATE = (
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'user' -%}{{ 'USER: ' }}"
    "{%- for p in m['content'] if p['type'] == 'image' -%}{{ '<image>\\n' }}{%- endfor -%}"
    "{%- for p in m['content'] if p['type'] == 'text' -%}{{ p['text'] }}{%- endfor -%}{{ ' ' }}"
    "{%- else -%}{{ 'ASSISTANT: ' + m['content'][0]['text'] + eos_token }}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'ASSISTANT:' }}{%- endif -%}"
)
TEXT = ["is there a lesion on the left side of the ct scan? yes no left right lung liver"] * 20


def build_tiny_llava(out: Path, seed: int = 0) -> Path:
    """A random-weight LLaVA (1-layer CLIP ViT + 1-layer Llama, 32-d) saved as a complete checkpoint."""
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    specials = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    core.train_from_iterator(TEXT + ["USER: ASSISTANT:"] * 20, trainer=trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        extra_special_tokens={"image_token": "<image>"},
    )
    tok.chat_template = CHAT_TEMPLATE
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
    )
    text = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        image_seq_length=16,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor = LlavaProcessor(
        image_processor=images,
        tokenizer=tok,
        patch_size=8,
        vision_feature_select_strategy="default",
        chat_template=CHAT_TEMPLATE,
        num_additional_image_tokens=1,
    )
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def make_items(folder: Path, n: int = 5) -> list[VQAItem]:
    folder.mkdir(parents=True, exist_ok=True)
    questions = [
        "Is there a lesion?",
        "Which side?",
        "Is the lung on the left side of the scan clear?",
        "Liver?",
    ]
    items = []
    for i in range(n):
        path = folder / f"img{i}.png"
        Image.new("RGB", (40, 36), (30 * i % 255, 200 - 20 * i, 90)).save(path)
        kind = "CLOSED" if i % 2 == 0 else "OPEN"
        items.append(VQAItem(f"q{i}", path, questions[i % len(questions)], "yes", kind))
    return items


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return build_tiny_llava(tmp_path_factory.mktemp("tiny_llava"))


@pytest.fixture(scope="module")
def items(tmp_path_factory) -> list[VQAItem]:
    return make_items(tmp_path_factory.mktemp("images"))


def _reference_answer(model_dir: Path, item: VQAItem, max_new_tokens: int) -> str:
    """One question, no padding, straight through transformers: what the batched path must reproduce."""
    from transformers import AutoProcessor

    model = LlavaForConditionalGeneration.from_pretrained(model_dir).eval()
    proc = AutoProcessor.from_pretrained(model_dir)
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": item.question}]}]
    prompt = proc.apply_chat_template(msgs, add_generation_prompt=True)
    inputs = proc(images=[Image.open(item.image_path).convert("RGB")], text=[prompt], return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens)
    return proc.tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()


def test_prompt_uses_the_checkpoint_chat_template(tiny):
    a = LlavaAnswerer(tiny, device="cpu")
    assert a.prompt("Is there a lesion?") == "USER: <image>\nIs there a lesion? ASSISTANT:"
    assert a.processor.tokenizer.padding_side == "left"


def test_batched_left_padded_answers_match_single_unpadded_generation(tiny, items):
    batched = answer(tiny, items, batch_size=3, max_new_tokens=6, device="cpu")
    assert len(batched) == len(items) and all(isinstance(t, str) for t in batched)
    expected = [_reference_answer(tiny, item, 6) for item in items]
    assert batched == expected
    assert any(batched), "the random model should emit some text; an all-empty run proves nothing"
    # the prompt is not echoed back: only new tokens are decoded
    assert not any("USER" in t and "ASSISTANT" in t for t in batched)


def test_batch_size_does_not_change_answers(tiny, items):
    a = LlavaAnswerer(tiny, device="cpu")
    assert a.answer(items, batch_size=1, max_new_tokens=4) == a.answer(items, batch_size=5, max_new_tokens=4)


def test_missing_checkpoint_and_bad_args(tmp_path, tiny, items):
    with pytest.raises(FileNotFoundError, match=r"nothing.*no config\.json"):
        answer(tmp_path / "nothing", items)
    with pytest.raises(ValueError, match="batch_size=0"):
        LlavaAnswerer(tiny, device="cpu").answer(items, batch_size=0)


def test_unreadable_image_names_the_question(tiny, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(OSError, match=r"question qX: cannot read image .*broken\.png"):
        answer(tiny, [VQAItem("qX", bad, "Is there a lesion?", "yes", "CLOSED")], device="cpu")


# ------------------------------------------------------------------ yes/no likelihood (not LLaVA-Med's metric)
def test_yes_no_logprobs_match_an_unpadded_forward_and_any_batch_size(tiny, items):
    a = LlavaAnswerer(tiny, device="cpu")
    batched = a.yes_no_logprobs(items, batch_size=5)
    single = a.yes_no_logprobs(items, batch_size=1)
    assert len(batched) == len(items)
    for (y1, n1), (y5, n5) in zip(single, batched, strict=True):
        assert y1 == pytest.approx(y5, abs=1e-4) and n1 == pytest.approx(n5, abs=1e-4)
    # one question straight through transformers: the model's own loss on the word's tokens
    item, tok = items[0], a.processor.tokenizer
    image = Image.open(item.image_path).convert("RGB")

    def logprob(word: str) -> float:
        prompt = a.prompt(item.question)
        k = len(tok(prompt + word, add_special_tokens=False)["input_ids"]) - len(
            tok(prompt, add_special_tokens=False)["input_ids"]
        )
        inputs = a.processor(images=[image], text=[prompt + word], return_tensors="pt")
        labels = inputs["input_ids"].clone()
        labels[:, :-k] = -100
        with torch.no_grad():
            return -a.model(**inputs, labels=labels).loss.item() * k

    yes = torch.logsumexp(torch.tensor([logprob(" Yes"), logprob(" yes")]), 0).item()
    no = torch.logsumexp(torch.tensor([logprob(" No"), logprob(" no")]), 0).item()
    assert single[0] == (pytest.approx(yes, abs=1e-4), pytest.approx(no, abs=1e-4))
    assert yes < 0 and no < 0 and yes != no


def test_likelihood_closed_accuracy_scores_yes_no_questions_only(tmp_path):
    from vital.llava.inference import likelihood_closed_accuracy

    img = tmp_path / "x.png"
    qs = [
        VQAItem("a", img, "Lesion?", "yes", "CLOSED"),
        VQAItem("b", img, "Lesion?", "No.", "CLOSED"),
        VQAItem("c", img, "Lesion?", "no", "CLOSED"),
        VQAItem("d", img, "Which side?", "left", "CLOSED"),  # not yes/no: skipped
        VQAItem("e", img, "Where?", "yes", "OPEN"),  # open: skipped
    ]
    lp = [(-0.1, -2.0), (-3.0, -0.2), (-0.1, -2.0), (-0.1, -2.0), (-0.1, -2.0)]
    m = likelihood_closed_accuracy(qs, lp)
    assert m["questions"] == 3 and m["accuracy"] == pytest.approx(2 / 3, abs=1e-4)
    assert "not LLaVA-Med" in m["metric"]
