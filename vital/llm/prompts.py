"""Prompts as BioMed-VITAL prescribes: generation requirements, clinician-selected demonstrations
sampled per modality (seeded per figure), the figure as a downscaled data URL with its real MIME
type, and the caption and in-text mentions as context. Also the judge's clinician-written rubric.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import random
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from vital.io import read_text
from vital.llm.client import ConfigError
from vital.schema import FigureRecord
from vital.shards import open_image, read_bytes

GENERATION_SYSTEM = """\
You are an AI assistant specialised in biomedicine, helping to build instruction-following data \
for a biomedical vision-language model. You see a figure from a biomedical research paper together \
with its caption and, sometimes, sentences of the paper that mention it.

Write a multi-turn conversation between a person asking about the figure (human) and an assistant \
answering as if looking at the image (gpt). Requirements:
- Ask about what can be seen: imaging modality, anatomy or tissue, findings and their location, \
number, size and appearance. Vary the questions.
- Answers are precise, confident only as far as the image supports, and free of medical advice.
- Use the caption and mentions only to get the facts right. Never reveal them: do not write \
"the caption says", "as mentioned", "according to the text/context" or similar; speak of "the image".
- Do not invent findings that neither the image nor the text supports.
- {rounds}.

Reply with JSON only: {{"conversations": [{{"from": "human", "value": "..."}}, {{"from": "gpt", "value": "..."}}, ...]}}"""

JUDGE_SYSTEM = """\
You are a clinician reviewing instruction-tuning data for a biomedical vision-language model. \
You see a figure, its caption, and one generated conversation about the figure. Score the \
conversation from 0 (unusable) to 10 (excellent) on this rubric:
1. Accuracy: every answer agrees with the image and the caption; no hallucinated findings, side, \
count or size. Any factual error caps the score at 4.
2. Relevance: questions are about what the image shows and matter clinically.
3. Specificity: answers are concrete (location, number, size, appearance), not vague.
4. Independence: the conversation never refers to the caption or the text.
5. Completeness and form: answers are complete sentences, not truncated.
Reply with JSON only: {"score": <number 0-10>, "rationale": "<one or two sentences>"}"""

JUDGE_SCHEMA = {
    "type": "json_schema",
    "json_schema": {
        "name": "judgment",
        "strict": True,
        "schema": {
            "type": "object",
            "properties": {"score": {"type": "number"}, "rationale": {"type": "string"}},
            "required": ["score", "rationale"],
            "additionalProperties": False,
        },
    },
}

_MIME = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp", "GIF": "image/gif"}


class DemonstrationError(ConfigError):
    """Demonstrations cannot be read; the message names the file."""


class ImageError(ValueError):
    """A figure's image is missing or unreadable (a record-level problem)."""


# ---------------------------------------------------------------- demonstrations
def load_demonstrations(directory: Path) -> dict[str, list[dict]]:
    """``{domain: [demo, ...]}`` from ``<directory>/<domain>.json``; fails naming the file."""
    directory = Path(directory)
    files = sorted(directory.glob("*.json")) if directory.is_dir() else []
    if not files:
        raise DemonstrationError(
            f"{directory}: no demonstrations (<domain>.json) found; run `vital world` or add them"
        )
    out: dict[str, list[dict]] = {}
    for f in files:
        try:
            demos = json.loads(read_text(f))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DemonstrationError(f"{f}: unreadable demonstrations ({e})") from None
        if not isinstance(demos, list):
            raise DemonstrationError(f"{f}: expected a JSON list of demonstrations")
        for i, d in enumerate(demos):
            if (
                not isinstance(d, dict)
                or not d.get("fig_caption")
                or not isinstance(d.get("conversations"), list)
            ):
                raise DemonstrationError(f"{f}[{i}]: a demonstration needs fig_caption and conversations")
        out[f.stem] = demos
    return out


def pick_demonstrations(
    demos: dict[str, list[dict]], domain: str, k: int, seed: int, pair_id: str
) -> list[dict]:
    """k demonstrations of the figure's modality (falling back to all), the same on every rerun."""
    pool = demos.get(domain) or [d for ds in demos.values() for d in ds]
    if k <= 0 or not pool:
        return []
    rng = random.Random(f"{seed}:{pair_id}")
    return rng.sample(pool, min(k, len(pool)))


# ---------------------------------------------------------------- images
def image_data_url(path: Path, max_side: int) -> str:
    """The figure as a data URL with its real MIME type, downscaled so its longer side <= max_side."""
    try:
        raw = read_bytes(path)
        with Image.open(io.BytesIO(raw)) as img:
            fmt = img.format or "PNG"
            img.load()
            if max(img.size) > max_side:
                scale = max_side / max(img.size)
                img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))))
                fmt = fmt if fmt in ("PNG", "JPEG", "WEBP") else "PNG"
                if fmt == "JPEG" and img.mode not in ("RGB", "L"):
                    img = img.convert("RGB")
                buf = io.BytesIO()
                img.save(buf, format=fmt)
                raw = buf.getvalue()
    except FileNotFoundError:
        raise ImageError(f"image not found: {path}") from None
    except (OSError, UnidentifiedImageError) as e:
        raise ImageError(f"image unreadable: {path} ({e.__class__.__name__})") from None
    mime = _MIME.get(fmt, "image/png")
    return f"data:{mime};base64,{base64.b64encode(raw).decode()}"


def check_image(path: Path) -> None:
    """Cheap readability check (header + integrity) for backends that do not send the image."""
    try:
        with open_image(path) as img:
            img.verify()
    except FileNotFoundError:
        raise ImageError(f"image not found: {path}") from None
    except (OSError, UnidentifiedImageError, SyntaxError) as e:
        raise ImageError(f"image unreadable: {path} ({e.__class__.__name__})") from None


def estimate_image_tokens(max_side: int) -> int:
    """OpenAI high-detail vision cost: 85 + 170 per 512-px tile."""
    tiles = max(1, -(-max_side // 512)) ** 2
    return 85 + 170 * tiles


# ---------------------------------------------------------------- messages
def _context(caption: str, mentions: list[str]) -> str:
    text = f"Figure caption: {caption.strip()}"
    if mentions:
        text += "\nFigure context:\n" + "\n".join(f"- {m.strip()}" for m in mentions if m.strip())
    return text


def _demo_answer(demo: dict) -> str:
    turns = [
        {"from": t["from"], "value": t["value"].replace("<image>", "").strip()} for t in demo["conversations"]
    ]
    return json.dumps({"conversations": turns}, ensure_ascii=False)


def generation_messages(
    record: FigureRecord, image_url: str, demos: list[dict], min_rounds: int, max_rounds: int
) -> list[dict]:
    rounds = (
        f"Between {min_rounds} and {max_rounds} question-answer rounds"
        if min_rounds < max_rounds
        else f"Exactly {min_rounds} question-answer round{'s' if min_rounds > 1 else ''}"
    )
    messages: list[dict] = [{"role": "system", "content": GENERATION_SYSTEM.format(rounds=rounds)}]
    for demo in demos:
        mentions = demo.get("in_text_mention") or []
        mentions = [m["tokens"] if isinstance(m, dict) else str(m) for m in mentions]
        messages.append({"role": "user", "content": _context(demo["fig_caption"], mentions)})
        messages.append({"role": "assistant", "content": _demo_answer(demo)})
    messages.append(
        {
            "role": "user",
            "content": [
                {"type": "text", "text": _context(record.fig_caption, record.in_text_mention)},
                {"type": "image_url", "image_url": {"url": image_url}},
            ],
        }
    )
    return messages


def judge_messages(record: FigureRecord, image_url: str, conversation: list[dict]) -> list[dict]:
    convo = "\n".join(f"{t['from']}: {t['value'].replace('<image>', '').strip()}" for t in conversation)
    return [
        {"role": "system", "content": JUDGE_SYSTEM},
        {
            "role": "user",
            "content": [
                {
                    "type": "text",
                    "text": f"Figure caption: {record.fig_caption.strip()}\n\nConversation:\n{convo}",
                },
                {"type": "image_url", "image_url": {"url": image_url}},
            ],
        },
    ]


def estimate_text_tokens(messages: list[dict]) -> int:
    """~4 characters per token for text; images counted separately."""
    chars = 0
    for m in messages:
        c = m["content"]
        chars += len(c) if isinstance(c, str) else sum(len(p.get("text", "")) for p in c)
    return chars // 4 + 4 * len(messages)


def derived_seed(*parts: object) -> int:
    """A stable 31-bit seed from any parts (sent as the request's ``seed``, so it is in the key)."""
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:4], "big") >> 1
