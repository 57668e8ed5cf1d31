"""Generate stage: N candidate LLaVA conversations per sampled figure.

Backends are a registry: ``template`` (offline demo stand-in built on the world's hidden truth) and
``openai``/``azure`` (any OpenAI-compatible endpoint through :mod:`vital.llm`). Every backend goes
through the same validation, accounting and outputs. Invalid or failed candidates stay out of
``candidates.jsonl`` and are listed with their reason in ``generate_failures.jsonl`` and counted in
``metrics/generate.json``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from vital.artifacts.sample import read_sample
from vital.backends import GENERATE
from vital.drops import Drops
from vital.failures import StageFailed, check_failed_share, max_failed_share
from vital.io import write_jsonl
from vital.llm.accounting import dry_run_estimate, offline_dry_run, summary_line
from vital.llm.batch import BatchLimits
from vital.llm.engine import Outcome, Request, message_content
from vital.llm.parse import InvalidOutput, parse_conversation, validate_conversation
from vital.llm.prompts import (
    ImageError,
    check_image,
    derived_seed,
    estimate_image_tokens,
    estimate_text_tokens,
    generation_messages,
    image_data_url,
    load_demonstrations,
    pick_demonstrations,
    prompt_path,
    read_prompt,
    synthetic_ids,
)
from vital.llm.runtime import LLMRuntime
from vital.params import Params, ParamsError
from vital.paths import Paths, repo_relative
from vital.registry import Backend, choose
from vital.schema import Candidate, FigureRecord
from vital.shards import index_refs
from vital.stats import Failures, evidence_path, keeping

FIGURES_PER_CHUNK = 128  # bounds memory: image data URLs of one chunk are held at once


@dataclass
class Result:
    """One candidate slot: a validated conversation, or the reason there is none."""

    record: FigureRecord
    k: int
    turns: list[dict] | None
    reason: str | None = None
    detail: str = ""
    provenance: dict = field(default_factory=dict)


# ---------------------------------------------------------------- inputs
def load_figures(
    path: Path, corpus: Path, check_images: bool = True, fetched: dict[str, str] | None = None
) -> tuple[list[FigureRecord], Drops]:
    """Sampled figures, and the ones skipped (counted by reason, listed with file:line or pair_id); the
    sample's lines by the rules of :func:`vital.artifacts.read_sample` (only a sample with no usable record
    aborts the stage). ``fetched`` (the fetch stage's index, pair_id -> shard ref) replaces
    each record's image; a figure not in it was not fetched (its reason is in the fetch's report)."""
    figures, drops = [], Drops()
    for rec in read_sample(path, drops).values():
        if not rec.fig_caption.strip():
            drops.add("empty_caption", rec.pair_id)
            continue
        if fetched is not None:
            if rec.pair_id not in fetched:
                drops.add("image_not_fetched", rec.pair_id, "see artifacts/figures/report.jsonl")
                continue
            rec = rec.model_copy(update={"image": fetched[rec.pair_id]})
        if check_images:
            try:
                check_image(corpus / rec.image)
            except ImageError as e:
                drops.add("missing_image" if "not found" in str(e) else "corrupt_image", rec.pair_id, str(e))
                continue
        figures.append(rec)
    return figures, drops


# ---------------------------------------------------------------- backends
class OpenAIBackend:
    """GPT-4V/4o-style generation through the shared engine (``openai`` or ``azure``)."""

    def __init__(self, params: Params, paths: Paths) -> None:
        gp = self.gp = params.generate
        self.paths = paths
        self.runtime = LLMRuntime.of(
            "generate",
            gp,
            paths.request_cache,
            BatchLimits(
                max_lines=gp.batch_max_lines,
                max_bytes=int(gp.batch_max_mb * 2**20),
                poll_s=gp.batch_poll_s,
                rounds=gp.batch_rounds,
            ),
        )
        self.demos: dict[str, list[dict]] = {}
        self.synthetic: set[str] = set()
        self.instructions = ""
        self.image_skips: list[dict] = []

    def load_inputs(self, refuse_synthetic: bool = True) -> None:
        """The prompt file and the demonstrations; refuses the demo's synthetic demonstrations unless
        ``generate.allow_synthetic`` opts in (checked before any connection to the server)."""
        gp = self.gp
        self.instructions = read_prompt(gp.prompt_file, "generation", gp.structure, "generate.prompt_file")
        self.demos = load_demonstrations(self.paths.demonstrations)
        self.synthetic = set(synthetic_ids(self.demos))
        if refuse_synthetic and self.synthetic and gp.demos_per_prompt and not gp.allow_synthetic:
            shown = ", ".join(sorted(self.synthetic)[:3]) + (" ..." if len(self.synthetic) > 3 else "")
            raise ParamsError(
                f"generate.allow_synthetic: {self.paths.demonstrations} holds {len(self.synthetic)} synthetic "
                f"demonstrations of the demo world ({shown}); put your clinicians' demonstrations there "
                "(docs/generation.md), or set generate.allow_synthetic: true to pay for requests with them"
            )

    def preflight(self) -> None:
        self.load_inputs()
        self.runtime.preflight()

    def request(self, rec: FigureRecord, image_url: str, k: int, attempt: int) -> Request:
        gp = self.gp
        demos = pick_demonstrations(
            self.demos, rec.primary_domain, gp.demos_per_prompt, gp.seed, rec.pair_id, gp.structure
        )
        messages = generation_messages(
            rec, image_url, demos, gp.min_rounds, gp.max_rounds, self.instructions, gp.structure
        )
        body = {
            "model": gp.model,
            "messages": messages,
            "temperature": gp.temperature,
            "max_tokens": gp.max_tokens,
            "seed": derived_seed(gp.seed, rec.pair_id, k, attempt),
        }
        if gp.json_mode:
            body["response_format"] = {"type": "json_object"}
        est = estimate_text_tokens(messages) + estimate_image_tokens(gp.max_image_side) + gp.max_tokens
        return Request(body, est_tokens=est, tag=(rec, k, attempt, [d.get("id") for d in demos]))

    def images(self, chunk: list[FigureRecord]) -> dict[str, str]:
        urls = {}
        for rec in chunk:
            try:
                urls[rec.pair_id] = image_data_url(self.paths.corpus / rec.image, self.gp.max_image_side)
            except ImageError as e:
                reason = "missing_image" if "not found" in str(e) else "corrupt_image"
                self.image_skips.append({"pair_id": rec.pair_id, "reason": reason, "detail": str(e)})
        return urls

    def generate(self, figures: list[FigureRecord]) -> Iterator[Result]:
        for start in range(0, len(figures), FIGURES_PER_CHUNK):
            chunk = figures[start : start + FIGURES_PER_CHUNK]
            urls = self.images(chunk)
            pending = [(rec, k) for rec in chunk if rec.pair_id in urls for k in range(self.gp.candidates)]
            for attempt in range(self.gp.max_invalid_retries + 1):
                reqs = [self.request(rec, urls[rec.pair_id], k, attempt) for rec, k in pending]
                desc = f"generate {start + len(chunk)}/{len(figures)} figs" + (
                    f" (retry {attempt})" if attempt else ""
                )
                outcomes = self.runtime.send(reqs, desc)
                pending = []
                for o in outcomes:
                    res = self._result(o, attempt)
                    if (
                        res.turns is None
                        and res.reason in RETRYABLE
                        and attempt < self.gp.max_invalid_retries
                    ):
                        pending.append((res.record, res.k))
                        self.runtime.usage.reasks[res.reason] += 1
                    else:
                        yield res
                if not pending:
                    break

    def _result(self, o: Outcome, attempt: int) -> Result:
        rec, k, _, demo_ids = o.request.tag
        prov = {
            "backend": self.gp.backend,
            "model": self.gp.model,
            "mode": self.gp.mode,
            "attempt": attempt,
            "request": o.request.key,
            "demos": demo_ids,
        }
        if self.synthetic.intersection(demo_ids):
            prov["synthetic"] = True  # so a paid judge knows (judge.allow_synthetic)
        if not o.ok:
            return Result(rec, k, None, f"request_{o.error}", o.detail, prov)
        content, why = message_content(o.response)
        if why:
            return Result(rec, k, None, why, "", prov)
        try:
            turns = parse_conversation(content)
        except InvalidOutput as e:
            return Result(rec, k, None, e.reason, str(e), prov)
        return validated(rec, k, turns, self.gp.min_rounds, prov)

    def metrics(self) -> dict:
        return self.runtime.metrics()


RETRYABLE = {
    "finish_length",
    "finish_content_filter",
    "empty_content",
    "unparseable",
    "not_alternating",
    "empty_turn",
    "unanswered",
    "too_few_rounds",
    "leakage",
    "empty",
}

GENERATORS: dict[str, Backend] = GENERATE  # the role's table in vital/backends.py


def validated(rec: FigureRecord, k: int, turns: list[dict], min_rounds: int, prov: dict) -> Result:
    try:
        return Result(rec, k, validate_conversation(turns, min_rounds), provenance=prov)
    except InvalidOutput as e:
        return Result(rec, k, None, e.reason, str(e), prov)


def prompt_files(params: Params, root: Path) -> list[str]:
    """The instruction file an API backend sends (the lab's or the shipped default): a dep of generate."""
    gp = params.generate
    if gp.backend == "template":
        return []
    return [repo_relative(prompt_path(gp.prompt_file, "generation", gp.structure), root)]


class Generator(Protocol):
    """The generate role: every row of GENERATORS loads a class ``(params, paths) -> Generator``."""

    def preflight(self) -> None: ...

    def generate(self, figures: list[FigureRecord]) -> Iterator[Result]: ...

    def metrics(self) -> dict: ...


def backend_for(params: Params, paths: Paths) -> Generator:
    return choose(GENERATORS, params.generate.backend, "generate.backend").load()(params, paths)


# ---------------------------------------------------------------- stage
def run(params: Params, paths: Paths) -> dict:
    """Write candidates.jsonl and generate_failures.jsonl; return the record (vital.stage writes it)."""
    gp = params.generate
    backend = backend_for(params, paths)
    backend.preflight()  # config errors surface here, before any request
    fetched = index_refs(paths.fetched / "index.parquet", paths.corpus) if params.fetch.enabled else None
    figures, drops = load_figures(paths.sample, paths.corpus, gp.backend == "template", fetched)
    candidates, failures = [], []
    for res in backend.generate(figures):
        cid = f"{res.record.pair_id}#{res.k}"
        if res.turns is None:
            failures.append(
                {"id": cid, "pair_id": res.record.pair_id, "reason": res.reason, "detail": res.detail}
            )
            continue
        candidates.append(
            Candidate(
                id=cid,
                pair_id=res.record.pair_id,
                image=res.record.image,
                domain=res.record.primary_domain,
                conversations=res.turns,
                generator=res.provenance,
            )
        )
    total = len(figures) + drops.total
    late = getattr(backend, "image_skips", [])  # images found unreadable while encoding
    for skip in late:
        drops.add(skip["reason"], skip["pair_id"], skip.get("detail", ""))
    candidates.sort(key=lambda c: (c.pair_id, int(c.id.rsplit("#", 1)[1])))
    write_jsonl(paths.candidates, candidates)
    write_jsonl(paths.artifacts / "generate_failures.jsonl", failures)
    metrics = {
        "backend": gp.backend,
        "model": gp.model,
        "figures": total,
        "figures_used": len(figures) - len(late),
        **drops.metrics(),
        "candidates_requested": (len(figures) - len(late)) * gp.candidates,
        "candidates": len(candidates),
        **_failures(failures).metrics(),
        "failures_file": str(paths.artifacts / "generate_failures.jsonl"),
        **backend.metrics(),
    }
    used = {rec.pair_id for rec in figures} - {s["pair_id"] for s in late}
    with_candidates = {c.pair_id for c in candidates}
    empty = sorted(used - with_candidates)
    metrics["figures_without_candidates"] = len(empty)
    metrics["figures_without_candidates_list"] = empty
    print(
        summary_line("generate", len(candidates), "candidates", metrics["failed_by_reason"], metrics),
        file=sys.stderr,
    )
    if empty:
        shown = ", ".join(empty[:10]) + (f" and {len(empty) - 10} more" if len(empty) > 10 else "")
        print(
            f"[generate] {len(empty)} figure{'s' if len(empty) > 1 else ''} got no candidate: {shown}",
            file=sys.stderr,
        )
    api = GENERATORS[gp.backend].api
    evidence = evidence_path(Path("."), "generate")
    with keeping(metrics):
        check_failed_share(
            "generate",
            "candidates",
            len(failures),
            metrics["candidates_requested"],
            metrics["failed_by_reason"],
            max_failed_share("generate", gp.client.max_failed_share) if api else None,
            f"{paths.artifacts / 'generate_failures.jsonl'}, {evidence}",
        )
        if not candidates and total:
            raise StageFailed(
                f"generate: no candidates written: all {total} figures were skipped "
                f"({', '.join(f'{r} {n}' for r, n in metrics['dropped_by_reason'].items())}; see {evidence})"
            )
    return metrics


def _failures(failed: list[dict]) -> Failures:
    out = Failures()
    for f in failed:
        out.add(f["reason"], f.get("id") or f.get("candidate_id", ""), str(f.get("detail") or ""))
    return out


def headline(detail: dict) -> dict:
    return {"candidates": detail.get("candidates"), "cost_usd": detail.get("estimated_cost_usd")}


UNFETCHED_IMAGE = "data:image/png;base64,"  # priced like any image: its tokens come from max_image_side


def dry_run(params: Params, paths: Paths, price_unfetched: bool = False) -> dict:
    """Requests that would be sent, cache hits, estimated tokens and cost; sends nothing.

    ``price_unfetched`` (`vital plan`, before the fetch stage ran): a figure whose image is not readable yet
    is priced as it will be sent once fetched, instead of counted as dropped."""
    gp = params.generate
    if gp.backend == "template":
        return offline_dry_run("generate", "template", "template generator")
    backend = backend_for(params, paths)
    backend.load_inputs(refuse_synthetic=False)  # pricing sends nothing; the note below warns
    cache = backend.runtime.open_cache()
    figures, drops = load_figures(paths.sample, paths.corpus, check_images=False)
    est = dry_run_estimate(
        (
            backend.request(rec, url, k, 0)
            for chunk in _chunks(figures)
            for rec, url in _urls(backend, chunk, price_unfetched)
            for k in range(gp.candidates)
        ),
        cache,
        backend.runtime.price,
        gp,
        len(figures),
        drops,
        "generate",
        [] if price_unfetched else backend.image_skips,
    ) | ({"images_not_readable_yet": len(backend.image_skips)} if price_unfetched else {})
    if backend.synthetic and gp.demos_per_prompt and not gp.allow_synthetic:
        est["synthetic_demonstrations"] = len(backend.synthetic)
        est["note"] += (
            f"; the run will refuse: {paths.demonstrations} holds the demo world's synthetic demonstrations "
            "(generate.allow_synthetic)"
        )
    return est


def _chunks(figures: list[FigureRecord]) -> Iterator[list[FigureRecord]]:
    for i in range(0, len(figures), FIGURES_PER_CHUNK):
        yield figures[i : i + FIGURES_PER_CHUNK]


def _urls(
    backend: OpenAIBackend, chunk: list[FigureRecord], price_unfetched: bool = False
) -> list[tuple[FigureRecord, str]]:
    urls = backend.images(chunk)
    if price_unfetched:
        return [(rec, urls.get(rec.pair_id, UNFETCHED_IMAGE)) for rec in chunk]
    return [(rec, urls[rec.pair_id]) for rec in chunk if rec.pair_id in urls]
