"""The chat_eval stage: judge-scored open visual chat on the evaluate stage's predictions.

For every set in ``chat_eval.sets`` (default: all of ``evaluate.sets``) it takes the OPEN questions
and, with the judge protocol of :mod:`vital.vqa.judge` (both presentation orders per pair):

- scores every model of ``evaluate.models`` against the reference answers (relative score, overall, per
  domain and per question type: ``chat_eval.relative`` picks vital's ratio of sums or LLaVA-Med's mean of
  per-question ratios; both are recorded);
- scores ``compare[0]`` against its baseline ``compare[1]`` (win rate, ties, wins per presentation order),
  with vital's two-score protocol or BioMed-VITAL's (``chat_eval.win_rate: paper``: image, question,
  ground truth, both answers, verdict [[A]]/[[B]]/[[C]]).

Each comparison also reports the position-consistency rate: the share of questions, judged in
both orders, whose preferred answer (or tie) is the same in both. Backends: ``heuristic`` (offline
stand-in, :class:`vital.demo.reference_judge.HeuristicAnswerJudge`) and ``openai``/``azure``
through the generation engine (cache, shared limiter, retries). Every per-order verdict goes to
``artifacts/chat_eval/judgments.jsonl``; the summary to ``metrics/chat_eval.json``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from vital.backends import CHAT_EVAL
from vital.drops import Drops
from vital.evaluate import load_sets, tuned_models
from vital.io import RecordError, read_jsonl, write_jsonl
from vital.llm.accounting import estimate_cost, offline_dry_run
from vital.llm.engine import Outcome, Request, message_content
from vital.llm.prompts import ImageError, image_data_url
from vital.llm.runtime import LLMRuntime
from vital.params import CHAT_REFERENCE, ChatEvalParams, Params
from vital.paths import Paths
from vital.registry import Backend, choose
from vital.vqa.items import LoadedSet, VQAItem
from vital.vqa.judge import parse_reply, relative_scores, win_rate

REFERENCE = CHAT_REFERENCE
MAX_LISTED = 20


def output_dir(paths: Paths) -> Path:
    return paths.artifacts / "chat_eval"


def judgments_path(paths: Paths) -> Path:
    return output_dir(paths) / "judgments.jsonl"


# ------------------------------------------------------------------ backends
class ChatJudge(Protocol):
    def preflight(self) -> None: ...

    def send(self, requests: list[Request], desc: str) -> list[Outcome]: ...

    def metrics(self) -> dict: ...


_A1 = "\n\n[Assistant 1]\n"
_E1 = "\n[End of Assistant 1]\n\n[Assistant 2]\n"
_E2 = "\n[End of Assistant 2]\n\n[System]\n"


def pair_answers(messages: list[dict]) -> tuple[str, str]:
    """The two answers shown in a ``vital.vqa.judge.pair_messages`` prompt, first then second."""
    text = str(messages[-1].get("content", "")) if messages else ""
    start, end = text.find(_A1), text.rfind(_E2)
    mid = text.find(_E1, start + len(_A1)) if start >= 0 else -1
    if start < 0 or mid < 0 or end < mid:
        raise ValueError(
            "judge prompt has no [Assistant 1]/[Assistant 2] blocks (pair_messages format changed?)"
        )
    return text[start + len(_A1) : mid], text[mid + len(_E1) : end]


class EngineChatJudge:
    """A judge model behind an OpenAI-compatible API, through the generation engine."""

    def __init__(self, cp: ChatEvalParams, paths: Paths) -> None:
        self.runtime = LLMRuntime.of("chat_eval", cp, paths.request_cache)

    def preflight(self) -> None:
        self.runtime.preflight()

    def send(self, requests: list[Request], desc: str) -> list[Outcome]:
        return self.runtime.send(requests, desc)

    def metrics(self) -> dict:
        return self.runtime.metrics()


# each: (cp, paths) -> ChatJudge
BACKENDS: dict[str, Backend] = CHAT_EVAL  # the role's table in vital/backends.py


def backend_for(cp: ChatEvalParams, paths: Paths) -> ChatJudge:
    return choose(BACKENDS, cp.backend, "chat_eval.backend").load()(cp, paths)


# ------------------------------------------------------------------ per-order verdicts
@dataclass(frozen=True)
class OrderVerdict:
    """One judge request: A and B shown in ``order`` ("ab" = A first), scores in A/B terms."""

    item: VQAItem
    order: str
    score_a: float | None
    score_b: float | None
    reason: str | None
    request: str
    cached: bool
    text: str | None

    @property
    def preference(self) -> int | None:
        """+1 when A scored higher, -1 when B did, 0 for a tie, None when unscored."""
        if self.score_a is None or self.score_b is None:
            return None
        return (self.score_a > self.score_b) - (self.score_a < self.score_b)


def order_verdict(outcome: Outcome, protocol: str = "scores") -> OrderVerdict:
    """Parse one outcome exactly as ``vital.vqa.judge.judge_pairs`` does, keeping the order."""
    item, order = outcome.request.tag
    text, reason, scores = None, outcome.error, None
    if outcome.ok:
        text, reason = message_content(outcome.response)
        scores, unread = parse_reply(text, protocol)
        reason = reason or unread
    a = b = None
    if scores is not None:
        a, b = scores if order == "ab" else scores[::-1]
    return OrderVerdict(item, order, a, b, reason, outcome.request.key, outcome.cached, text)


class _Recorder:
    """A ``send`` for :mod:`vital.vqa.judge` that also keeps every outcome (and names the progress bar)."""

    def __init__(self, send: Callable[[list[Request], str], list[Outcome]], desc: str) -> None:
        self._send, self.desc = send, desc
        self.outcomes: list[Outcome] = []

    def __call__(self, requests: list[Request], desc: str) -> list[Outcome]:
        out = self._send(requests, self.desc)
        self.outcomes.extend(out)
        return out

    def verdicts(self, protocol: str = "scores") -> list[OrderVerdict]:
        return [order_verdict(o, protocol) for o in self.outcomes]


def position_consistency(verdicts: Sequence[OrderVerdict]) -> dict[str, Any]:
    """Share of questions scored in both orders whose preference (A, B or tie) does not flip."""
    prefs: dict[str, dict[str, int]] = {}
    for v in verdicts:
        if v.preference is not None:
            prefs.setdefault(v.item.question_id, {})[v.order] = v.preference
    both = [p for p in prefs.values() if len(p) == 2]
    consistent = sum(p["ab"] == p["ba"] for p in both)
    return {
        "n_both_orders": len(both),
        "consistent": consistent,
        "position_consistency": consistent / len(both) if both else None,
    }


def by_order(verdicts: Sequence[OrderVerdict]) -> dict[str, dict[str, int]]:
    """Per presentation order, how often A, B or neither scored higher."""
    out = {o: {"a_higher": 0, "b_higher": 0, "tie": 0, "failed": 0} for o in ("ab", "ba")}
    names = {1: "a_higher", -1: "b_higher", 0: "tie", None: "failed"}
    for v in verdicts:
        out[v.order][names[v.preference]] += 1
    return out


def judgment_rows(set_name: str, a: str, b: str, verdicts: Sequence[OrderVerdict]) -> list[dict]:
    return [
        {
            "set": set_name,
            "comparison": f"{a}_vs_{b}",
            "a": a,
            "b": b,
            "question_id": v.item.question_id,
            "domain": v.item.domain,
            "question_type": v.item.question_type,
            "order": v.order,
            "shown_first": a if v.order == "ab" else b,
            "score_a": v.score_a,
            "score_b": v.score_b,
            "error": v.reason,
            "cached": v.cached,
            "request": v.request,
            "verdict": v.text,
        }
        for v in verdicts
    ]


# ------------------------------------------------------------------ inputs
@dataclass
class ChatSet:
    """The OPEN questions of one set and each model's answers to them."""

    name: str
    items: list[VQAItem]
    answers: dict[str, dict[str, str]]
    skipped: list[str]
    n_loaded: int


def _chosen_sets(params: Params) -> list[str]:
    """``chat_eval.sets`` (names params.py checked against evaluate.sets), or every evaluate set."""
    known = [s.name for s in params.evaluate.sets]
    return params.chat_eval.sets if params.chat_eval.sets is not None else known


def read_predictions(path: Path, items: dict[str, VQAItem], skipped: list[str]) -> dict[str, str]:
    """question_id -> answer text for the given items; unusable records are listed in ``skipped``."""
    if not path.is_file():
        raise FileNotFoundError(f"predictions not found: {path} (run the evaluate stage first)")
    out: dict[str, str] = {}
    for n, rec in enumerate(read_jsonl(path), 1):
        where = f"{path}#{n}"
        qid = rec.get("question_id") if isinstance(rec, dict) else None
        if qid is None:
            skipped.append(f"{where}: no question_id")
        elif not isinstance(rec.get("text"), str):
            skipped.append(f"{where}: question {qid!r} has no answer text")
        elif str(qid) in out:
            skipped.append(f"{where}: duplicate question id {qid!r}")
        elif str(qid) in items and rec.get("prompt", items[str(qid)].question) != items[str(qid)].question:
            skipped.append(f"{where}: question {qid!r} differs from the set's (stale predictions?)")
        elif str(qid) in items:
            out[str(qid)] = rec["text"]
    return out


def load_chat_set(
    loaded: LoadedSet, models: Sequence[str], predictions: Path, placeholder: str | None = None
) -> ChatSet:
    """``placeholder``: the answer of a model whose predictions are not there yet (a dry run prices them)."""
    items = [i for i in loaded.items if i.answer_type == "OPEN"]
    by_id = {i.question_id: i for i in items}
    skipped = [f"{s} (question file)" for s in loaded.skipped]
    answers = {}
    for m in models:
        path = predictions / m / f"{loaded.name}.jsonl"
        if placeholder is not None and not path.is_file():
            answers[m] = dict.fromkeys(by_id, placeholder)
        else:
            answers[m] = read_predictions(path, by_id, skipped)
    return ChatSet(loaded.name, items, answers, skipped, len(loaded.items))


# ------------------------------------------------------------------ judging
def judge_image(cp: ChatEvalParams) -> Callable[[VQAItem], str]:
    """The item's image as a data URL for a vision judge (``win_rate: paper``), downscaled to
    ``chat_eval.max_image_side``; an unreadable image stops the stage naming it."""

    def image_of(item: VQAItem) -> str:
        try:
            return image_data_url(item.image_path, cp.max_image_side)
        except ImageError as e:
            raise RecordError(f"chat_eval.win_rate=paper: question {item.question_id}: {e}") from None

    return image_of


def _answered(cs: ChatSet, *models: str) -> list[VQAItem]:
    return [i for i in cs.items if all(i.question_id in cs.answers[m] for m in models)]


def score_set(cs: ChatSet, judge: ChatJudge, cp: ChatEvalParams) -> tuple[dict, list[dict]]:
    """Relative score of every model and the win rate of compare[0] over compare[1] on one set."""
    kw = {"max_tokens": cp.max_tokens, "temperature": cp.temperature}
    rows: list[dict] = []
    relative: dict[str, dict] = {}
    for m, answers in cs.answers.items():
        items = _answered(cs, m)
        rec = _Recorder(judge.send, f"chat_eval {cs.name}: {m} vs {REFERENCE}")
        res = (
            relative_scores(items, [answers[i.question_id] for i in items], rec, cp.model, cp.relative, **kw)
            if items
            else {}
        )
        verdicts = rec.verdicts()
        relative[m] = {"n_questions": len(items), **res, **position_consistency(verdicts)}
        rows += judgment_rows(cs.name, m, REFERENCE, verdicts)
    a, b = cp.compare
    items = _answered(cs, a, b)
    rec = _Recorder(judge.send, f"chat_eval {cs.name}: {a} vs {b}")
    pa, pb = ([cs.answers[m][i.question_id] for i in items] for m in (a, b))
    protocol = {"protocol": cp.win_rate, "image_of": judge_image(cp)} if cp.win_rate == "paper" else {}
    res = win_rate(items, pa, pb, rec, cp.model, **kw, **protocol) if items else {"n": 0}
    verdicts = rec.verdicts(cp.win_rate)
    wins = {
        "a": a,
        "b": b,
        "protocol": cp.win_rate,
        **res,
        "by_order": by_order(verdicts),
        **position_consistency(verdicts),
    }
    rows += judgment_rows(cs.name, a, b, verdicts)
    missing = {m: len(cs.items) - len(ans) for m, ans in cs.answers.items()}
    data = {
        "n_items": cs.n_loaded,
        "n_open": len(cs.items),
        "missing_predictions": missing,
        **Drops.from_lines(cs.skipped, listed=MAX_LISTED).metrics(),
    }
    return {"relative": relative, "win_rate": wins, "data": data}, rows


def _load(params: Params, paths: Paths, placeholder: str | None = None) -> list[ChatSet]:
    names = _chosen_sets(params)
    ev = params.evaluate.model_copy(update={"sets": [s for s in params.evaluate.sets if s.name in names]})
    models = [*tuned_models(params), *ev.models]
    return [load_chat_set(s, models, paths.predictions, placeholder) for s in load_sets(ev, paths.root)]


def _missing_predictions(params: Params, paths: Paths) -> list[str]:
    names = _chosen_sets(params)
    models = [*tuned_models(params), *params.evaluate.models]
    return [f"{m}/{n}" for m in models for n in names if not (paths.predictions / m / f"{n}.jsonl").is_file()]


def run(params: Params, paths: Paths) -> dict:
    """Write artifacts/chat_eval/judgments.jsonl and metrics/chat_eval.json; return the metrics."""
    cp = params.chat_eval
    judge = backend_for(cp, paths)
    sets = _load(params, paths)
    judge.preflight()
    results: dict[str, Any] = {}
    rows: list[dict] = []
    for cs in sets:
        results[cs.name], set_rows = score_set(cs, judge, cp)
        rows += set_rows
    write_jsonl(judgments_path(paths), rows)
    results["_stage"] = {
        "backend": cp.backend,
        "model": cp.model,
        "compare": list(cp.compare),
        "sets": [cs.name for cs in sets],
        "judgments": len(rows),
        "unscored": sum(r["score_a"] is None for r in rows),
        **judge.metrics(),
    }
    return results


# ------------------------------------------------------------------ dry run
class _DryRun:
    """A ``send`` that keeps the requests and answers none of them."""

    def __init__(self) -> None:
        self.requests: list[Request] = []

    def send(self, requests: list[Request], desc: str) -> list[Outcome]:
        self.requests += requests
        return [Outcome(r, None, error="dry_run") for r in requests]

    def preflight(self) -> None:
        pass

    def metrics(self) -> dict:
        return {}


def dry_run(params: Params, paths: Paths) -> dict:
    """Count the judge requests a run would send (minus cached ones) and bound their cost; send nothing."""
    cp = params.chat_eval
    # before evaluate has run, every answer is priced at its bound: evaluate.max_new_tokens (~4 characters each)
    missing = _missing_predictions(params, paths)
    sets = _load(params, paths, placeholder="x" * (4 * params.evaluate.max_new_tokens))
    if cp.backend == "heuristic":
        return offline_dry_run("chat_eval", "heuristic", "heuristic judge")
    runtime = EngineChatJudge(cp, paths).runtime
    cache = runtime.open_cache()
    recorder = _DryRun()
    for cs in sets:
        score_set(cs, recorder, cp)
    unique = {r.key: r for r in recorder.requests}
    todo = [r for k, r in unique.items() if k not in cache]
    tok_in = sum(max(0, r.est_tokens - cp.max_tokens) for r in todo)
    tok_out = cp.max_tokens * len(todo)
    cost = estimate_cost(runtime.price, tok_in, tok_out)
    return {
        "stage": "chat_eval",
        "backend": cp.backend,
        "model": cp.model,
        "sets": [cs.name for cs in sets],
        "requests_to_send": len(todo),
        "cached": len(unique) - len(todo),
        "estimated_input_tokens": tok_in,
        "estimated_output_tokens_max": tok_out,
        "estimated_cost_usd_max": None if cost is None else round(cost, 4),
        "predictions_missing": missing,
        "note": "output at max_tokens is an upper bound"
        + (
            f"; {len(missing)} model/set predictions not written yet: their answers priced at "
            "evaluate.max_new_tokens"
            if missing
            else ""
        )
        + ("" if runtime.price else f"; no price for {cp.model!r} in chat_eval.prices, so no cost"),
    }


def headline(detail: dict) -> dict:
    """Per set: the relative score of the tuned subsets (mean over their seeds) and the base, and the win rate."""
    out: dict[str, Any] = {}
    for set_name, block in detail.items():
        if set_name == "_stage" or not isinstance(block, dict):
            continue
        relative = block.get("relative") or {}
        numbers: dict[str, Any] = {}
        for group in ("top", "random", "base"):
            scores = [
                r["relative_score"]
                for name, r in relative.items()
                if (name == group or name.startswith(f"{group}-s")) and r.get("relative_score") is not None
            ]
            if scores:
                numbers[group] = sum(scores) / len(scores)
        numbers["win_rate"] = (block.get("win_rate") or {}).get("win_rate")
        out[set_name] = numbers
    return out
