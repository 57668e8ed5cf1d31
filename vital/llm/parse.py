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


_SCORE = re.compile(r"(?:score|rating)\s*[:=]?\s*(\d+(?:\.\d+)?)(?:\s*/\s*10)?", re.IGNORECASE)
_FRACTION = re.compile(r"(\d+(?:\.\d+)?)\s*/\s*10\b")
# a first line that is only the score ("7", "7/10", "7.5.", "**7**"); the rest is the rationale
_LEADING = re.compile(r"\A\s*[*_]*(\d+(?:\.\d+)?)[*_]*(?:\s*/\s*10)?[*_]*\s*\.?\s*(?:\n(.*))?\Z", re.DOTALL)


def parse_score(text: str) -> tuple[float, str]:
    """(score 0..10, rationale) from JSON, a leading score line ('7\\n<reason>'), or text such as
    'Score: 7/10 because ...' or '... 7/10 ...'."""
    data = _json_payload(text)
    if isinstance(data, dict) and "score" in data:
        try:
            score = float(data["score"])
        except (TypeError, ValueError):
            raise InvalidOutput("unparseable_score", f"score {data['score']!r}") from None
        return _in_range(score), str(data.get("rationale") or data.get("reason") or "")
    lead = _LEADING.match(text)
    if lead:
        return _in_range(float(lead.group(1))), (lead.group(2) or "").strip()[:500]
    m = _SCORE.search(text) or _FRACTION.search(text)
    if not m:
        raise InvalidOutput("unparseable_score", text[:80])
    return _in_range(float(m.group(1))), text.strip()[:500]


def _in_range(score: float) -> float:
    if not 0 <= score <= 10:
        raise InvalidOutput("score_out_of_range", str(score))
    return score
