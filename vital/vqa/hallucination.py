"""Hallucination rate of free-text answers about figures whose findings are known (the demo's CHAIR/POPE).

Every finding an answer asserts (lesion present or not, side, count, size, modality: the claims
``vital.demo.claims`` reads) is checked against the figure's hidden truth. Two rates, after CHAIR
(Rohrbach et al. 2018): ``claim_rate``, wrong claims over checkable claims (CHAIR_i), and ``answer_rate``,
answers with at least one wrong claim over answers with a checkable claim (CHAIR_s); plus the wrong share
per finding and the answers that assert nothing checkable (a model that says nothing hallucinates nothing,
so that count is reported beside the rates, never folded into them).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from vital.demo.claims import FINDING_KEYS, check_claims, extract_claims
from vital.io import RecordError, write_jsonl
from vital.vqa.items import VQAItem


def hallucination_rate(answers: Iterable[tuple[str, str]], truth: dict[str, dict], source: str = "") -> dict:
    """``answers``: (figure pair_id, free-text answer); ``truth``: pair_id -> hidden findings
    (``vital.world.load_truth``). An answer about a figure without truth is a RecordError naming it."""
    n = with_claims = wrong_answers = checked = wrong = 0
    by_finding = {k: [0, 0] for k in FINDING_KEYS}  # [wrong, checked]
    for pair_id, text in answers:
        findings = truth.get(pair_id)
        if findings is None:
            raise RecordError(f"{source or 'answers'}: no hidden truth for figure {pair_id!r}")
        n += 1
        claims = extract_claims(text)
        answer_wrong = answer_checked = 0
        for key in FINDING_KEYS:
            if key in claims:
                ok, seen = check_claims({key: claims[key]}, findings)
                by_finding[key][0] += seen - ok
                by_finding[key][1] += seen
                answer_wrong, answer_checked = answer_wrong + seen - ok, answer_checked + seen
        checked, wrong = checked + answer_checked, wrong + answer_wrong
        with_claims += answer_checked > 0
        wrong_answers += answer_wrong > 0
    return {
        "answers": n,
        "answers_with_checkable_claims": with_claims,
        "answers_without_checkable_claims": n - with_claims,
        "claims_checked": checked,
        "claims_wrong": wrong,
        "claim_rate": round(wrong / checked, 4) if checked else None,
        "answer_rate": round(wrong_answers / with_claims, 4) if with_claims else None,
        "wrong_share_by_finding": {k: round(w / c, 4) if c else None for k, (w, c) in by_finding.items()},
    }


# One of the demo conversations' own "describe" questions (vital.world.conversation), so the tuned model is
# asked in words its instruction data used: the free-text answer whose claims are checked.
DESCRIBE_PROMPT = "Describe the image in detail."


def describe_items(truth: dict[str, dict], images: Path, prompt: str = DESCRIBE_PROMPT) -> list[VQAItem]:
    """One open-ended question per figure of ``truth`` (each record has its ``image``, relative to
    ``images``): what :func:`hallucination_of` asks."""
    return [
        VQAItem(
            question_id=f"{pair_id}_describe",
            image_path=Path(images) / findings["image"],
            question=prompt,
            answer="",
            answer_type="OPEN",
            domain=findings.get("domain"),
            extra={"pair_id": pair_id},
        )
        for pair_id, findings in sorted(truth.items())
    ]


def hallucination_of(
    answerer, truth: dict[str, dict], images: Path, batch_size: int, max_new_tokens: int, desc: str = ""
) -> tuple[dict, list[dict]]:
    """Ask ``answerer`` (``vital.llava.inference.LlavaAnswerer`` or alike) to describe every figure of
    ``truth`` and rate its answers: (:func:`hallucination_rate`, one row per answer with its claims)."""
    items = describe_items(truth, images)
    texts = answerer.answer(items, batch_size, max_new_tokens, desc or "describe")
    pairs = [(item.extra["pair_id"], text) for item, text in zip(items, texts, strict=True)]
    rows = [{"pair_id": pid, "text": text, "claims": extract_claims(text)} for pid, text in pairs]
    return hallucination_rate(pairs, truth, source=desc), rows


def world_hallucination(
    params, paths, answerer, name: str = "", rows_path: Path | None = None
) -> dict | None:
    """:func:`hallucination_of` on the demo world's held-out VQA test figures (their truth replayed from
    ``params.world``, :func:`vital.world.vqa_truth`), when ``evaluate.hallucination`` is ``world``;
    None when it is ``none`` (no hidden truth outside the demo). ``rows_path``: every description and its
    claims, as JSONL."""
    ev = params.evaluate
    if ev.hallucination == "none":
        return None
    from vital.world import vqa_truth

    truth = vqa_truth(params.world)
    images = paths.vqa / "demo"
    missing = [f["image"] for f in truth.values() if not (images / f["image"]).is_file()]
    if missing:
        raise RecordError(
            f"evaluate.hallucination=world: {images / missing[0]} (and {len(missing) - 1} more of the world's "
            f"{len(truth)} held-out VQA figures) not found: build the world with these world params "
            "(`vital world`), or set evaluate.hallucination: none"
        )
    rates, rows = hallucination_of(
        answerer, truth, images, ev.batch_size, ev.describe_max_new_tokens, f"{name}/describe"
    )
    if rows_path is not None:
        write_jsonl(rows_path, rows)
    return rates
