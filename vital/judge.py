"""Judge stage: the model preference, a 0-10 score per candidate on a rubric the lab can edit.

Backends are a registry: ``heuristic`` (offline demo stand-in, noisy agreement with the hidden
truth) and ``openai``/``azure`` through the same engine as generation (structured output where
the backend supports it, a tolerant parser otherwise). ``judge.structure`` chooses the request:
``vital`` scores the whole conversation on vital's own rubric (one request per candidate); ``paper``
scores each question-answer pair as BioMed-VITAL's released code does (the candidate's score is the
mean over its pairs). Unscored candidates are counted and listed.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from vital.artifacts.candidates import read_candidates
from vital.artifacts.sample import read_sample
from vital.backends import JUDGE
from vital.drops import Drops
from vital.failures import StageFailed, check_failed_share, max_failed_share
from vital.io import write_jsonl
from vital.llm.accounting import dry_run_estimate, offline_dry_run, summary_line
from vital.llm.batch import BatchLimits
from vital.llm.engine import Request, message_content
from vital.llm.parse import InvalidOutput, parse_score
from vital.llm.prompts import (
    JUDGE_SCHEMA,
    ImageError,
    derived_seed,
    estimate_image_tokens,
    estimate_text_tokens,
    image_data_url,
    is_synthetic_candidate,
    judge_messages,
    judge_pair_messages,
    prompt_path,
    qa_pairs,
    read_prompt,
)
from vital.llm.runtime import LLMRuntime
from vital.params import Params, ParamsError
from vital.paths import Paths, repo_relative
from vital.registry import Backend, choose
from vital.schema import Candidate, FigureRecord, Judgment
from vital.stats import Failures, evidence_path, keeping

CANDIDATES_PER_CHUNK = 512


def load_inputs(paths: Paths, drops: Drops) -> tuple[list[Candidate], dict[str, FigureRecord]]:
    """Candidates and their figures, by the rules of :mod:`vital.artifacts` (a candidate whose figure is not
    in the sample is dropped as ``figure_not_in_sample``)."""
    figures = read_sample(paths.sample, drops)
    return read_candidates(paths.candidates, drops, figures), figures


def turns_of(c: Candidate) -> list[dict]:
    return [t.model_dump(by_alias=True) for t in c.conversations]


def _reply_score(response) -> tuple[float, str]:
    """(score, rationale) of a judge reply; InvalidOutput when it has no usable content or score."""
    content, why = message_content(response)
    if why:
        raise InvalidOutput(why)
    return parse_score(content)


class OpenAIJudge:
    def __init__(self, params: Params, paths: Paths) -> None:
        jp = self.jp = params.judge
        self.paths = paths
        self.runtime = LLMRuntime.of("judge", jp, paths.request_cache, BatchLimits(poll_s=jp.batch_poll_s))
        self._urls: dict[str, str | None] = {}
        self.rubric = ""

    def load_rubric(self) -> None:
        self.rubric = read_prompt(self.jp.rubric_file, "judge", self.jp.structure, "judge.rubric_file")

    def preflight(self) -> None:
        self.load_rubric()
        self.runtime.preflight()

    def image(self, rec: FigureRecord) -> str | None:
        if rec.pair_id not in self._urls:
            try:
                self._urls[rec.pair_id] = image_data_url(
                    self.paths.corpus / rec.image, self.jp.max_image_side
                )
            except ImageError:
                self._urls[rec.pair_id] = None
        return self._urls[rec.pair_id]

    def request(self, cand: Candidate, rec: FigureRecord, url: str, attempt: int) -> Request:
        jp = self.jp
        messages = judge_messages(rec, url, turns_of(cand), self.rubric)
        body = {
            "model": jp.model,
            "messages": messages,
            "temperature": jp.temperature,
            "max_tokens": jp.max_tokens,
            "seed": derived_seed(jp.seed, cand.id, attempt),
        }
        if jp.structured:
            body["response_format"] = JUDGE_SCHEMA
        est = estimate_text_tokens(messages) + estimate_image_tokens(jp.max_image_side) + jp.max_tokens
        return Request(body, est_tokens=est, tag=cand)

    def pair_request(
        self, cand: Candidate, rec: FigureRecord, url: str, index: int, qa: tuple[str, str], attempt: int
    ) -> Request:
        """The paper structure: one question-answer pair; the score comes on the first line (no schema)."""
        jp = self.jp
        messages = judge_pair_messages(rec, url, *qa, self.rubric)
        body = {
            "model": jp.model,
            "messages": messages,
            "temperature": jp.temperature,
            "max_tokens": jp.max_tokens,
            "seed": derived_seed(jp.seed, cand.id, index, attempt),
        }
        est = estimate_text_tokens(messages) + estimate_image_tokens(jp.max_image_side) + jp.max_tokens
        return Request(body, est_tokens=est, tag=(cand, index))

    def requests_for(self, cand: Candidate, rec: FigureRecord, url: str, attempt: int) -> list[Request]:
        if self.jp.structure == "paper":
            return [
                self.pair_request(cand, rec, url, i, qa, attempt)
                for i, qa in enumerate(qa_pairs(turns_of(cand)))
            ]
        return [self.request(cand, rec, url, attempt)]

    def score(
        self, items: list[tuple[Candidate, FigureRecord]]
    ) -> Iterator[tuple[Candidate, float | None, str, str | dict]]:
        if self.jp.structure == "paper":
            yield from self.score_pairs(items)
            return
        for start in range(0, len(items), CANDIDATES_PER_CHUNK):
            chunk = items[start : start + CANDIDATES_PER_CHUNK]
            pending = []
            for cand, rec in chunk:
                url = self.image(rec)
                if url is None:
                    yield cand, None, "corrupt_image", f"{rec.image}"
                else:
                    pending.append((cand, rec, url))
            self._urls.clear()
            desc = f"judge {start + len(chunk)}/{len(items)}"
            for (cand, _, _), score, rationale, detail in self._scored(pending, self.request, desc):
                yield cand, score, rationale, detail

    def _scored(
        self, pending: list[tuple], request, desc: str
    ) -> Iterator[tuple[tuple, float | None, str, str]]:
        """``(item, score, rationale, request key)`` of each pending item, or ``(item, None, reason, detail)``;
        an unusable reply is re-asked up to ``judge.max_invalid_retries`` times (``request(*item, attempt)``)."""
        for attempt in range(self.jp.max_invalid_retries + 1):
            outcomes = self.runtime.send([request(*item, attempt) for item in pending], desc)
            retry = []
            for o, item in zip(outcomes, pending, strict=True):
                if not o.ok:
                    yield item, None, f"request_{o.error}", o.detail
                    continue
                try:
                    score, rationale = _reply_score(o.response)
                except InvalidOutput as e:
                    if attempt < self.jp.max_invalid_retries:
                        retry.append(item)
                        self.runtime.usage.reasks[e.reason] += 1
                    else:
                        yield item, None, e.reason, str(e)[:200]
                    continue
                yield item, score, rationale, o.request.key
            pending = retry
            if not pending:
                break

    def score_pairs(
        self, items: list[tuple[Candidate, FigureRecord]]
    ) -> Iterator[tuple[Candidate, float | None, str, str | dict]]:
        """Every question-answer pair scored on its own; a candidate's score is the mean over its pairs,
        and it stays unjudged when any of its pairs does (with that pair's reason)."""
        for start in range(0, len(items), CANDIDATES_PER_CHUNK):
            chunk = items[start : start + CANDIDATES_PER_CHUNK]
            pending, rounds = [], {}
            for cand, rec in chunk:
                url = self.image(rec)
                if url is None:
                    yield cand, None, "corrupt_image", f"{rec.image}"
                    continue
                rounds[cand.id] = len(qa_pairs(turns_of(cand)))
                pending += [(cand, rec, url, i, qa) for i, qa in enumerate(qa_pairs(turns_of(cand)))]
            self._urls.clear()
            scored: dict[str, dict[int, tuple[float, str, str]]] = {cid: {} for cid in rounds}
            failed: dict[str, tuple[str, str]] = {}
            desc = f"judge {start + len(chunk)}/{len(items)} (per QA pair)"
            for (cand, _, _, index, _), score, why, detail in self._scored(pending, self.pair_request, desc):
                if score is not None:
                    scored[cand.id][index] = (score, why, detail)
                elif why.startswith("request_"):
                    failed.setdefault(cand.id, (why, detail))
                else:
                    failed.setdefault(cand.id, (why, f"QA pair {index + 1}: {detail}"))
            for cand, _ in chunk:
                if cand.id not in rounds:
                    continue
                if cand.id in failed or not rounds[cand.id]:
                    yield (
                        cand,
                        None,
                        *failed.get(cand.id, ("no_qa_pair", "the conversation has no question-answer pair")),
                    )
                    continue
                per_pair = [scored[cand.id][i] for i in range(rounds[cand.id])]
                scores = [p[0] for p in per_pair]
                rationale = " | ".join(f"QA {i + 1}: {p[0]:g} {p[1]}".strip() for i, p in enumerate(per_pair))
                detail = {"requests": [p[2] for p in per_pair], "pair_scores": scores, "aggregate": "mean"}
                yield cand, round(sum(scores) / len(scores), 4), rationale, detail

    def provenance(self) -> dict:
        return {"backend": self.jp.backend, "model": self.jp.model, "mode": self.jp.mode}

    def metrics(self) -> dict:
        return self.runtime.metrics()


JUDGES: dict[str, Backend] = JUDGE  # the role's table in vital/backends.py


def rubric_files(params: Params, root) -> list[str]:
    """The rubric an API judge sends (the lab's file or the shipped default): a dep of judge."""
    jp = params.judge
    if jp.backend == "heuristic":
        return []
    return [repo_relative(prompt_path(jp.rubric_file, "judge", jp.structure), root)]


def refuse_synthetic(params: Params, paths: Paths, cands: list[Candidate]) -> None:
    """A paid judge does not score candidates written by the template generator or from the demo world's
    synthetic demonstrations unless ``judge.allow_synthetic`` says so; checked before the first request."""
    if params.judge.backend == "heuristic" or params.judge.allow_synthetic:
        return
    synthetic = [c.id for c in cands if is_synthetic_candidate(c.generator)]
    if synthetic:
        raise ParamsError(
            f"judge.allow_synthetic: {len(synthetic)} of {len(cands)} candidates in {paths.candidates} were "
            f"written by the template generator or from synthetic demonstrations (first: {synthetic[0]}); "
            "generate them from your clinicians' demonstrations, or set judge.allow_synthetic: true to pay "
            "for judging them"
        )


class Judge(Protocol):
    """The judge role: every row of JUDGES loads a class ``(params, paths) -> Judge``."""

    def preflight(self) -> None: ...

    def score(
        self, items: list[tuple[Candidate, FigureRecord]]
    ) -> Iterator[
        tuple[Candidate, float | None, str, str]
    ]: ...  # candidate, score, rationale, failure detail

    def provenance(self) -> dict: ...

    def metrics(self) -> dict: ...


def backend_for(params: Params, paths: Paths) -> Judge:
    return choose(JUDGES, params.judge.backend, "judge.backend").load()(params, paths)


def _pairs(cands: list[Candidate], figures: dict[str, FigureRecord]) -> list:
    """Each candidate with its figure record, carrying the image the candidate was generated on (the fetch
    stage's shard ref when the profile fetches)."""
    items = []
    for c in cands:
        fig = figures[c.pair_id]
        items.append((c, fig if fig.image == c.image else fig.model_copy(update={"image": c.image})))
    return items


def run(params: Params, paths: Paths) -> dict:
    """Write judgments.jsonl; return the record (vital.stage writes it)."""
    backend = backend_for(params, paths)
    backend.preflight()
    drops = Drops()
    cands, figures = load_inputs(paths, drops)
    refuse_synthetic(params, paths, cands)
    items, failed = _pairs(cands, figures), []
    prov = backend.provenance()
    judgments = []
    for cand, score, rationale, detail in backend.score(items):
        if score is None:
            failed.append({"candidate_id": cand.id, "reason": rationale, "detail": detail})
            continue
        judge = (
            {**prov, **detail}
            if isinstance(detail, dict)
            else {**prov, "request": detail}
            if detail
            else prov
        )
        judgments.append(
            Judgment(
                candidate_id=cand.id, pair_id=cand.pair_id, score=score, rationale=rationale, judge=judge
            )
        )
    write_jsonl(paths.judgments, judgments)
    scores = [j.score for j in judgments]
    metrics = {
        "backend": params.judge.backend,
        "model": params.judge.model,
        "candidates": len(cands),
        "judged": len(judgments),
        **_failures(failed).metrics(),  # candidates whose judging failed (a refused request, no score)
        **drops.metrics(),  # input lines and candidates that could not be judged at all
        "score_mean": round(sum(scores) / len(scores), 4) if scores else None,
        **backend.metrics(),
    }
    print(
        summary_line("judge", len(judgments), "judgments", metrics["failed_by_reason"], metrics),
        file=sys.stderr,
    )
    with keeping(metrics):
        if not cands:
            why = f" ({drops.total} unreadable: {drops.summary()})" if drops else ""
            raise StageFailed(
                f"judge: {paths.candidates} holds no usable candidates{why}; nothing to judge (rerun generate)"
            )
        api = JUDGES[params.judge.backend].api
        check_failed_share(
            "judge",
            "candidates",
            len(failed) + drops.counts["figure_not_in_sample"],
            len(cands) + drops.counts["figure_not_in_sample"],
            metrics["failed_by_reason"],
            max_failed_share("judge", params.judge.client.max_failed_share) if api else None,
            f"{evidence_path(Path('.'), 'judge')} failed_examples",
        )
    return metrics


def _failures(failed: list[dict]) -> Failures:
    out = Failures(listed=len(failed))  # every unjudged candidate is listed: judging them again is the fix
    for f in failed:
        out.add(f["reason"], f["candidate_id"], str(f.get("detail") or ""))
    return out


def headline(detail: dict) -> dict:
    return {"score_mean": detail.get("score_mean"), "cost_usd": detail.get("estimated_cost_usd")}


def dry_run(params: Params, paths: Paths) -> dict:
    jp = params.judge
    if jp.backend == "heuristic":
        return offline_dry_run("judge", "heuristic", "heuristic judge")
    backend = backend_for(params, paths)
    backend.load_rubric()
    cache = backend.runtime.open_cache()
    drops = Drops()
    cands, figures = load_inputs(paths, drops)
    items = _pairs(cands, figures)

    def requests():
        for cand, rec in items:
            url = backend.image(rec)
            if url is not None:
                yield from backend.requests_for(cand, rec, url, 0)

    est = dry_run_estimate(requests(), cache, backend.runtime.price, jp, len(figures), drops, "judge")
    est["candidates"] = len(cands)
    return est
