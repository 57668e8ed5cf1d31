"""Judge stage: the model preference, a 0-10 score per candidate on a clinician-written rubric.

Backends are a registry: ``heuristic`` (offline demo stand-in, noisy agreement with the hidden
truth) and ``openai``/``azure`` through the same engine as generation (structured output where
the backend supports it, a tolerant parser otherwise). Unscored candidates are counted and listed.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Iterator

from vital.drops import Drops
from vital.failures import StageFailed, check_failed_share, max_failed_share
from vital.generate import _estimate
from vital.io import read_records, write_json, write_jsonl
from vital.llm.accounting import summary_line
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
    judge_messages,
)
from vital.llm.runtime import LLMRuntime
from vital.params import Params
from vital.paths import Paths
from vital.registry import Backend, choose
from vital.schema import Candidate, FigureRecord, Judgment

CANDIDATES_PER_CHUNK = 512


def load_inputs(paths: Paths, drops: Drops) -> tuple[list[Candidate], dict[str, FigureRecord]]:
    """Candidates and their figures; a malformed line of either file is skipped and counted in ``drops``."""
    sample = read_records(paths.sample, FigureRecord, drops.invalid("invalid_figure_record"))
    figures = {rec.pair_id: rec for _, rec in sample}
    cands = [c for _, c in read_records(paths.candidates, Candidate, drops.invalid("invalid_candidate"))]
    return cands, figures


def turns_of(c: Candidate) -> list[dict]:
    return [t.model_dump(by_alias=True) for t in c.conversations]


class OpenAIJudge:
    def __init__(self, params: Params, paths: Paths) -> None:
        jp = self.jp = params.judge
        self.paths = paths
        self.runtime = LLMRuntime(
            "judge",
            jp.backend,
            jp.model,
            jp.client,
            jp.prices,
            paths.request_cache,
            jp.mode,
            BatchLimits(poll_s=jp.batch_poll_s),
        )
        self._urls: dict[str, str | None] = {}

    def preflight(self) -> None:
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
        messages = judge_messages(rec, url, turns_of(cand))
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

    def score(
        self, items: list[tuple[Candidate, FigureRecord]]
    ) -> Iterator[tuple[Candidate, float | None, str, str]]:
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
            for attempt in range(self.jp.max_invalid_retries + 1):
                outcomes = self.runtime.send(
                    [self.request(c, r, u, attempt) for c, r, u in pending],
                    f"judge {start + len(chunk)}/{len(items)}",
                )
                retry = []
                for o, item in zip(outcomes, pending, strict=True):
                    cand = item[0]
                    if not o.ok:
                        yield cand, None, f"request_{o.error}", o.detail
                        continue
                    content, why = message_content(o.response)
                    try:
                        if why:
                            raise InvalidOutput(why)
                        score, rationale = parse_score(content)
                    except InvalidOutput as e:
                        if attempt < self.jp.max_invalid_retries:
                            retry.append(item)
                            self.runtime.usage.reasks[e.reason] += 1
                        else:
                            yield cand, None, e.reason, str(e)[:200]
                        continue
                    yield cand, score, rationale, o.request.key
                pending = retry
                if not pending:
                    break

    def provenance(self) -> dict:
        return {"backend": self.jp.backend, "model": self.jp.model, "mode": self.jp.mode}

    def metrics(self) -> dict:
        return self.runtime.metrics()


JUDGES: dict[str, Backend] = {
    "heuristic": Backend("vital.demo.heuristic_judge:HeuristicBackend"),
    "openai": Backend("vital.judge:OpenAIJudge"),
    "azure": Backend("vital.judge:OpenAIJudge"),
}


def backend_for(params: Params, paths: Paths):
    return choose(JUDGES, params.judge.backend, "judge.backend").load()(params, paths)


def _pairs(cands: list[Candidate], figures: dict[str, FigureRecord], drops: Drops) -> list:
    items = []
    for c in cands:
        if c.pair_id in figures:
            fig = figures[c.pair_id]
            # the image the candidate was generated on (the fetch stage's shard ref when the profile fetches)
            items.append((c, fig if fig.image == c.image else fig.model_copy(update={"image": c.image})))
        else:
            drops.add("figure_not_in_sample", c.id, c.pair_id)
    return items


def run(params: Params, paths: Paths) -> dict:
    """Write judgments.jsonl and metrics/judge.json; return the metrics."""
    t0 = time.monotonic()
    backend = backend_for(params, paths)
    backend.preflight()
    drops = Drops()
    cands, figures = load_inputs(paths, drops)
    items, failed = _pairs(cands, figures, drops), []
    prov = backend.provenance()
    judgments = []
    for cand, score, rationale, detail in backend.score(items):
        if score is None:
            failed.append({"candidate_id": cand.id, "reason": rationale, "detail": detail})
            continue
        judge = {**prov, "request": detail} if detail else prov
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
        "unjudged": len(failed),
        "unjudged_by_reason": dict(Counter(f["reason"] for f in failed)),
        "unjudged_list": failed,
        **drops.metrics(),  # input lines and candidates that could not be judged at all
        "score_mean": round(sum(scores) / len(scores), 4) if scores else None,
        **backend.metrics(),
        "wall_s": round(time.monotonic() - t0, 3),
    }
    write_json(paths.metric("judge"), metrics)
    print(
        summary_line("judge", len(judgments), "judgments", metrics["unjudged_by_reason"], metrics),
        file=sys.stderr,
    )
    if not cands:
        why = f" ({drops.total} unreadable: {drops.summary()})" if drops else ""
        raise StageFailed(
            f"judge: {paths.candidates} holds no usable candidates{why}; nothing to judge (rerun generate)"
        )
    api = params.judge.backend in ("openai", "azure")
    check_failed_share(
        "judge",
        "candidates",
        len(failed) + drops.counts["figure_not_in_sample"],
        len(cands),
        metrics["unjudged_by_reason"],
        max_failed_share("judge", params.judge.client.max_failed_share) if api else None,
        f"{paths.metric('judge')} unjudged_list",
    )
    return metrics


def dry_run(params: Params, paths: Paths) -> dict:
    jp = params.judge
    if jp.backend == "heuristic":
        return {
            "stage": "judge",
            "backend": "heuristic",
            "requests": 0,
            "estimated_cost_usd": 0.0,
            "note": "offline heuristic judge: no requests, no cost",
        }
    backend = backend_for(params, paths)
    cache = backend.runtime.open_cache()
    drops = Drops()
    cands, figures = load_inputs(paths, drops)
    items = _pairs(cands, figures, drops)

    def requests():
        for cand, rec in items:
            url = backend.image(rec)
            if url is not None:
                yield backend.request(cand, rec, url, 0)

    est = _estimate(requests(), cache, backend.runtime.price, jp, len(figures), drops, "judge")
    est["candidates"] = len(cands)
    return est
