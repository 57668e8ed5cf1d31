"""The generation and judge prompts, the demonstrations, and the figure as a data URL.

The instructions are text files the lab edits: ``generate.prompt_file`` and ``judge.rubric_file`` name
them; when they are null the defaults shipped in ``vital/llm/defaults/`` are used, one per structure:

- ``vital`` (the default): vital's own prompts. Generation asks for ``min_rounds``-``max_rounds`` rounds
  in JSON with demonstrations of the figure's own modality; the judge scores the whole conversation, with
  the caption, on five criteria of vital's (accuracy caps the score, independence from the text) and
  replies in JSON. They exist because the demo's checks (hidden-truth errors, leakage) are per
  conversation, and a JSON reply is parsed without guessing.
- ``paper``: the structure and criteria of BioMed-VITAL's released code, in this project's words.
  Generation asks for at least 4-5 exchanges in the text's terminology, with one demonstration per
  modality; the judge scores each question-answer pair with the image, caption and in-text mentions on
  the reference's criteria, score on the first line.

The figure is sent as a downscaled data URL with its real MIME type.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import random
import re
from pathlib import Path
from string import Template

from PIL import Image, UnidentifiedImageError

from vital.io import read_text
from vital.llm.client import ConfigError
from vital.schema import FigureRecord
from vital.shards import open_image, read_bytes

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
    """Demonstrations cannot be read or are malformed; the message names the file (and line)."""


class ImageError(ValueError):
    """A figure's image is missing or unreadable (a record-level problem)."""


class PromptFileError(ConfigError):
    """A prompt or rubric file cannot be read; the message names the param and the file."""


DEFAULTS = Path(__file__).parent / "defaults"
STRUCTURES = ("vital", "paper")
# the ids `vital world` gives the demo's synthetic demonstrations (vital/world/__init__.py)
SYNTHETIC_ID = re.compile(r"demo_(chest_xray|ct_scan|mri|histology|gross)_\d+")
_PAPER_JUDGE_ROLE = "You are a careful and precise assistant who checks the quality of answers."


# ---------------------------------------------------------------- prompt files
def prompt_path(lab_file: str | None, kind: str, structure: str) -> Path:
    """The lab's file if the param names one, else the shipped default ``<kind>_<structure>.txt``."""
    return Path(lab_file) if lab_file else DEFAULTS / f"{kind}_{structure}.txt"


def read_prompt(lab_file: str | None, kind: str, structure: str, param: str) -> str:
    """The instruction text, stripped; one line naming ``param`` and the file when it cannot be used."""
    path = prompt_path(lab_file, kind, structure)
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise PromptFileError(f"{param}: {path}: not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise PromptFileError(f"{param}: {path}: unreadable ({e.__class__.__name__}: {e})") from None
    if not text:
        raise PromptFileError(f"{param}: {path}: empty")
    return text


# ---------------------------------------------------------------- demonstrations
def _array_items(text: str, f: Path) -> list[tuple[int, object]]:
    """The items of a top-level JSON array, each with the line it starts on."""
    decoder = json.JSONDecoder()
    i = len(text) - len(text.lstrip())
    if not text.startswith("[", i):
        raise DemonstrationError(
            f"{f}:{text.count(chr(10), 0, i) + 1}: expected a JSON list of demonstrations"
        )
    items, i = [], i + 1
    while True:
        while i < len(text) and text[i] in " \t\r\n,":
            i += 1
        if text.startswith("]", i):
            return items
        line = text.count("\n", 0, i) + 1
        try:
            item, i = decoder.raw_decode(text, i)
        except json.JSONDecodeError as e:
            raise DemonstrationError(f"{f}:{e.lineno}: not valid JSON ({e.msg})") from None
        items.append((line, item))


def _demo_problem(d: object) -> str | None:
    if not isinstance(d, dict):
        return "a demonstration is a JSON object"
    if not isinstance(d.get("id"), str) or not d["id"].strip():
        return "needs an id (a non-empty string)"
    if not isinstance(d.get("fig_caption"), str) or not d["fig_caption"].strip():
        return "needs fig_caption (a non-empty string)"
    mentions = d.get("in_text_mention", [])
    if not isinstance(mentions, list) or not all(
        isinstance(m, str) or (isinstance(m, dict) and isinstance(m.get("tokens"), str)) for m in mentions
    ):
        return 'in_text_mention must be a list of strings or {"tokens": "..."} objects'
    turns = d.get("conversations")
    if not isinstance(turns, list) or len(turns) < 2 or len(turns) % 2:
        return "conversations must be a list of question-answer turns (an even number, at least 2)"
    for k, t in enumerate(turns):
        want = "human" if k % 2 == 0 else "gpt"
        if not isinstance(t, dict) or t.get("from") != want:
            return f'conversations[{k}] must be a {want} turn ({{"from": "{want}", "value": ...}})'
        if not isinstance(t.get("value"), str) or not t["value"].replace("<image>", "").strip():
            return f"conversations[{k}] has no text"
    if "synthetic" in d and not isinstance(d["synthetic"], bool):
        return "synthetic must be true or false"
    return None


def load_demonstrations(directory: Path) -> dict[str, list[dict]]:
    """``{modality: [demo, ...]}`` from ``<directory>/<modality>.json`` (docs/generation.md); every problem
    stops with one line naming the file and line."""
    directory = Path(directory)
    files = sorted(directory.glob("*.json")) if directory.is_dir() else []
    if not files:
        raise DemonstrationError(
            f"{directory}: no demonstrations (<modality>.json) found; add them (format: docs/generation.md)"
        )
    out: dict[str, list[dict]] = {}
    seen: dict[str, str] = {}
    for f in files:
        try:
            text = read_text(f)
        except (OSError, UnicodeDecodeError) as e:
            raise DemonstrationError(
                f"{f}: unreadable demonstrations ({e.__class__.__name__}: {e})"
            ) from None
        demos = []
        for line, d in _array_items(text, f):
            problem = _demo_problem(d)
            if problem:
                raise DemonstrationError(f"{f}:{line}: {problem}")
            if d["id"] in seen:
                raise DemonstrationError(
                    f"{f}:{line}: id {d['id']!r} is used again (first in {seen[d['id']]})"
                )
            seen[d["id"]] = f"{f}:{line}"
            demos.append(d)
        if not demos:
            raise DemonstrationError(f"{f}:1: holds no demonstrations (remove the file or add some)")
        out[f.stem] = demos
    return out


def is_synthetic(demo: dict) -> bool:
    """Marked ``"synthetic": true``, or one of the demo world's generated demonstrations."""
    return demo.get("synthetic") is True or bool(SYNTHETIC_ID.fullmatch(str(demo.get("id", ""))))


def is_synthetic_candidate(generator: dict) -> bool:
    """A candidate's provenance says it is synthetic: the template generator wrote it, or a generator was
    prompted with synthetic demonstrations."""
    demos = generator.get("demos") or []
    return (
        generator.get("backend") == "template"
        or generator.get("synthetic") is True
        or any(SYNTHETIC_ID.fullmatch(str(d)) for d in demos)
    )


def synthetic_ids(demos: dict[str, list[dict]]) -> list[str]:
    return [d["id"] for ds in demos.values() for d in ds if is_synthetic(d)]


def pick_demonstrations(
    demos: dict[str, list[dict]], domain: str, k: int, seed: int, pair_id: str, structure: str = "vital"
) -> list[dict]:
    """k demonstrations, the same on every rerun. vital: of the figure's modality (falling back to all);
    paper: spread over the modalities, one from each in turn (k = 5 with five modalities: one per
    modality, as the reference samples them)."""
    if k <= 0 or not demos:
        return []
    rng = random.Random(f"{seed}:{pair_id}")
    if structure == "paper":
        shuffled = {m: rng.sample(ds, len(ds)) for m, ds in sorted(demos.items())}
        picked: list[dict] = []
        for depth in range(max(len(ds) for ds in shuffled.values())):
            picked += [ds[depth] for ds in shuffled.values() if depth < len(ds)]
        return picked[:k]
    pool = demos.get(domain) or [d for ds in demos.values() for d in ds]
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


def _mentions(demo: dict) -> list[str]:
    return [m["tokens"] if isinstance(m, dict) else str(m) for m in demo.get("in_text_mention") or []]


def _rounds(min_rounds: int, max_rounds: int) -> str:
    if min_rounds < max_rounds:
        return f"Between {min_rounds} and {max_rounds} question-answer rounds"
    return f"Exactly {min_rounds} question-answer round{'s' if min_rounds > 1 else ''}"


def generation_system(instructions: str, min_rounds: int, max_rounds: int) -> str:
    """The prompt file's text with ``$rounds``, ``$min_rounds`` and ``$max_rounds`` filled in."""
    return Template(instructions).safe_substitute(
        rounds=_rounds(min_rounds, max_rounds), min_rounds=min_rounds, max_rounds=max_rounds
    )


def generation_messages(
    record: FigureRecord,
    image_url: str,
    demos: list[dict],
    min_rounds: int,
    max_rounds: int,
    instructions: str | None = None,
    structure: str = "vital",
) -> list[dict]:
    """The chat request: instructions, each demonstration as a user turn (its caption and mentions) and
    the assistant's conversation, then the figure. ``paper`` frames the text as the reference does and
    writes the demonstrations as 'User:/Assistant:' paragraphs; ``vital`` as JSON."""
    if instructions is None:
        instructions = read_prompt(None, "generation", structure, "generate.prompt_file")
    system = generation_system(instructions, min_rounds, max_rounds)
    messages: list[dict] = [{"role": "system", "content": system}]
    context, answer = (
        (_paper_context, _paper_demo_answer) if structure == "paper" else (_context, _demo_answer)
    )
    for demo in demos:
        messages.append({"role": "user", "content": context(demo["fig_caption"], _mentions(demo))})
        messages.append({"role": "assistant", "content": answer(demo)})
    figure = [
        {"type": "text", "text": context(record.fig_caption, record.in_text_mention)},
        {"type": "image_url", "image_url": {"url": image_url}},
    ]
    if structure == "paper":  # the reference sends the image first
        figure.reverse()
    messages.append({"role": "user", "content": figure})
    return messages


def _paper_context(caption: str, mentions: list[str]) -> str:
    text = f"Figure caption (a description of the image, to read as an extension of it):\n{caption.strip()}"
    mentions = [m.strip() for m in mentions if m.strip()]
    if mentions:
        text += "\n\nFigure context (where the article refers to the image):\n" + "\n".join(
            f"- {m}" for m in mentions
        )
    return text


def _paper_demo_answer(demo: dict) -> str:
    return "\n\n".join(
        ("User: " if t["from"] == "human" else "Assistant: ") + t["value"].replace("<image>", "").strip()
        for t in demo["conversations"]
    )


def judge_messages(
    record: FigureRecord, image_url: str, conversation: list[dict], rubric: str | None = None
) -> list[dict]:
    """vital's judge request: the rubric, then the caption, the whole conversation and the image."""
    if rubric is None:
        rubric = read_prompt(None, "judge", "vital", "judge.rubric_file")
    convo = "\n".join(f"{t['from']}: {t['value'].replace('<image>', '').strip()}" for t in conversation)
    return [
        {"role": "system", "content": rubric},
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


def qa_pairs(conversation: list[dict]) -> list[tuple[str, str]]:
    """The conversation's (question, answer) rounds, without LLaVA's ``<image>`` token."""
    text = [t["value"].replace("<image>", "").strip() for t in conversation]
    return list(zip(text[0::2], text[1::2], strict=False))


def judge_pair_messages(
    record: FigureRecord, image_url: str, question: str, answer: str, rubric: str | None = None
) -> list[dict]:
    """The paper structure's judge request, one question-answer pair: the image, then the caption, the
    in-text mentions, the pair and the rubric (which asks for the score on the first line)."""
    if rubric is None:
        rubric = read_prompt(None, "judge", "paper", "judge.rubric_file")
    mentions = "\n".join(f"\t- {m.strip()}" for m in record.in_text_mention if m.strip()) or "\t- (none)"
    text = (
        f"[Context]\nFigure caption:\n\t- {record.fig_caption.strip()}\n\n"
        f"Figure context:\n{mentions}\n\n"
        f"Question:\n\t- {question}\n\nAnswer:\n\t- {answer}\n\n[Instructions]\n{rubric}"
    )
    return [
        {"role": "system", "content": _PAPER_JUDGE_ROLE},
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": image_url}},
                {"type": "text", "text": text},
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
