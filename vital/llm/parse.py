"""Parse model output into LLaVA conversations and judge scores, and validate conversations."""

from __future__ import annotations

import json
import re

LEAKAGE = re.compile(
    r"\b(the|this|in the|from the) (caption|figure legend|legend|accompanying text|text|article|paper)\b|"
    r"\b(provided|given) (context|text|description)\b|"
    r"\bcaption (says|states|mentions|notes|describes|indicates)\b|"
    r"\b(as|is) (mentioned|stated|described|noted) (in|above|earlier)\b|\bin-text\b|"
    r"\baccording to the (caption|text|context|authors|description)\b",
    re.IGNORECASE,
)
_ROLE = {"human": "human", "user": "human", "gpt": "gpt", "assistant": "gpt", "q": "human", "a": "gpt"}
_LINE = re.compile(r"^\s*(human|user|gpt|assistant|q|a)\s*:\s*(.*)$", re.IGNORECASE)


class InvalidOutput(ValueError):
    """Model output that is not a usable result; ``reason`` is a short metrics key."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def _json_payload(text: str) -> object | None:
    text = text.strip()
    fence = re.search(r"```(?:json)?\s*(.*?)```", text, re.DOTALL)
    if fence:
        text = fence.group(1).strip()
    for candidate in (
        text,
        text[text.find("{") : text.rfind("}") + 1],
        text[text.find("[") : text.rfind("]") + 1],
    ):
        if candidate:
            try:
                return json.loads(candidate)
            except json.JSONDecodeError:
                continue
    return None


def parse_conversation(text: str) -> list[dict]:
    """JSON ({"conversations": [...]}, a bare list) or 'User:/Assistant:' lines -> LLaVA turns."""
    data = _json_payload(text)
    turns: list[dict] = []
    if isinstance(data, dict):
        data = data.get("conversations") or data.get("conversation") or data.get("turns")
    if isinstance(data, list):
        for t in data:
            if not isinstance(t, dict):
                raise InvalidOutput("unparseable", "a turn is not an object")
            role = _ROLE.get(str(t.get("from") or t.get("role") or "").lower())
            if role is None:
                raise InvalidOutput("unparseable", f"unknown speaker {t.get('from') or t.get('role')!r}")
            turns.append({"from": role, "value": str(t.get("value") or t.get("content") or "")})
        return turns
    for line in text.splitlines():
        m = _LINE.match(line)
        if m:
            turns.append({"from": _ROLE[m.group(1).lower()], "value": m.group(2)})
        elif turns and line.strip():
            turns[-1]["value"] += "\n" + line.strip()
    if not turns:
        raise InvalidOutput("unparseable", "neither JSON nor 'User:/Assistant:' turns")
    return turns


def validate_conversation(turns: list[dict], min_rounds: int) -> list[dict]:
    """Alternating human/gpt turns starting with the human, >= min_rounds, no empty answer, no leakage.

    Returns the turns with LLaVA's ``<image>`` token in the first human turn.
    """
    if not turns:
        raise InvalidOutput("empty")
    for i, t in enumerate(turns):
        want = "human" if i % 2 == 0 else "gpt"
        if t["from"] != want:
            raise InvalidOutput("not_alternating", f"turn {i} is {t['from']}, expected {want}")
        if not t["value"].replace("<image>", "").strip():
            raise InvalidOutput("empty_turn", f"turn {i} is empty")
    if len(turns) % 2:
        raise InvalidOutput("unanswered", "the last question has no answer")
    if len(turns) // 2 < min_rounds:
        raise InvalidOutput("too_few_rounds", f"{len(turns) // 2} < {min_rounds}")
    for i, t in enumerate(turns):
        m = LEAKAGE.search(t["value"])
        if m:
            raise InvalidOutput("leakage", f"turn {i} says {m.group(0)!r}")
    out = [dict(t) for t in turns]
    if "<image>" not in out[0]["value"]:
        out[0]["value"] = out[0]["value"].strip() + "\n<image>"
    return out


_NUMBER = r"(\d+(?:\.\d+)?)"
# "/ 10", "out of 100": the scale a score is given on; a score on another scale than 0-10 is rescaled
_SCALE = r"(?:\s*[*_]*\s*(?:/|\bout\s+of\b)\s*[*_]*\s*(\d+(?:\.\d+)?))?"
# markdown emphasis and punctuation may sit between the label and the number ("**Score:** 8")
_SCORE = re.compile(r"\b(?:score|rating)\b[*_\s]*[:=]?[*_\s]*" + _NUMBER + _SCALE, re.IGNORECASE)
_FRACTION = re.compile(_NUMBER + r"\s*[*_]*\s*(?:/|\bout\s+of\b)\s*[*_]*\s*(\d+(?:\.\d+)?)\b", re.IGNORECASE)
# a first line that is only the score ("7", "7/10", "7.5.", "**7**"); the rest is the rationale
_LEADING = re.compile(r"\A\s*[*_]*" + _NUMBER + r"[*_]*" + _SCALE + r"[*_]*\s*\.?\s*(?:\n(.*))?\Z", re.DOTALL)


def parse_score(text: str) -> tuple[float, str]:
    """(score 0..10, rationale) from JSON, a leading score line ('7\\n<reason>'), or text such as
    'Score: 7/10 because ...', '**Score:** 8' or 'I would rate this 7 out of 10'.

    A score given on another scale is rescaled to 0-10 ('Score: 7/100' is 0.7, '3/5' is 6), never
    read as if it were out of 10; a score above its scale or a scale of 0 is refused."""
    data = _json_payload(text)
    if isinstance(data, dict) and "score" in data:
        try:
            if isinstance(data["score"], bool):  # float(True) would read as a score of 1
                raise TypeError
            score = float(data["score"])
        except (TypeError, ValueError):
            raise InvalidOutput("unparseable_score", f"score {data['score']!r}") from None
        return _in_range(score), str(data.get("rationale") or data.get("reason") or "")
    lead = _LEADING.match(text)
    if lead:
        return _on_scale(lead.group(1), lead.group(2)), (lead.group(3) or "").strip()[:500]
    m = _SCORE.search(text) or _FRACTION.search(text)
    if not m:
        raise InvalidOutput("unparseable_score", text[:80])
    return _on_scale(m.group(1), m.group(2)), text.strip()[:500]


def _on_scale(value: str, scale: str | None) -> float:
    """``value`` out of ``scale`` (10 when none is given) as a 0-10 score."""
    score = float(value)
    if scale is None or float(scale) == 10:
        return _in_range(score)
    top = float(scale)
    if top <= 0 or score > top:
        raise InvalidOutput("score_out_of_range", f"{value}/{scale}")
    return _in_range(round(score * 10 / top, 4))


def _in_range(score: float) -> float:
    if not 0 <= score <= 10:
        raise InvalidOutput("score_out_of_range", str(score))
    return score
