"""A small byte-level BPE tokenizer for the demo language model, trained on the corpus text.

It is saved as an ordinary Hugging Face fast tokenizer (``AutoTokenizer.from_pretrained(out)`` loads it)
with the special tokens a LLaVA checkpoint needs: BOS/EOS, a pad token and the ``<image>`` placeholder.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

BOS, EOS, PAD, UNK = "<s>", "</s>", "<pad>", "<unk>"
IMAGE_TOKEN = "<image>"
SPECIAL_TOKENS = [UNK, BOS, EOS, PAD, IMAGE_TOKEN]
# The chat template's role markers occur in every training sequence; seeding them keeps them short.
_TEMPLATE_TEXT = ["USER: ASSISTANT: USER: ASSISTANT:"] * 200


def _nonempty(texts: Iterable[str]) -> Iterator[str]:
    for text in texts:
        if text and text.strip():
            yield text


def train_tokenizer(texts: Iterable[str], vocab_size: int, out: Path | str) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE of ``vocab_size`` tokens on ``texts`` and save it to ``out``.

    Byte-level means every string round-trips (no unknown characters at tuning or evaluation time).
    A BOS token is prepended to every encoded sequence, as Llama tokenizers do.
    """
    if vocab_size < len(SPECIAL_TOKENS) + 256:
        raise ValueError(
            f"foundation.vocab_size={vocab_size} is too small for a byte-level BPE (needs >= 261)"
        )
    core = Tokenizer(models.BPE(unk_token=None))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    seen = 0

    def counted() -> Iterator[str]:
        nonlocal seen
        for text in _nonempty(texts):
            seen += 1
            yield text
        yield from _TEMPLATE_TEXT

    core.train_from_iterator(counted(), trainer=trainer)
    if seen == 0:
        raise ValueError("train_tokenizer: no non-empty text to train on (is the corpus empty?)")
    bos_id = core.token_to_id(BOS)
    core.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        extra_special_tokens={"image_token": IMAGE_TOKEN},
        padding_side="left",  # batched generation (evaluation) needs left padding; training pads itself
        model_max_length=2048,
    )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(out)
    return tok
