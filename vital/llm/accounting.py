"""Counters for model-facing work: requests, cache hits, retries, failures, tokens, cost."""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from vital.params import Price

if TYPE_CHECKING:
    from vital.drops import Drops
    from vital.llm.cache import RequestCache
    from vital.params import GenerateParams, JudgeParams


@dataclass
class Usage:
    requests_sent: int = 0
    responses: int = 0
    cache_hits: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    retries: Counter = field(default_factory=Counter)
    failures: Counter = field(default_factory=Counter)
    reasks: Counter = field(default_factory=Counter)  # invalid outputs asked again, by reason
    started: float = field(default_factory=time.monotonic)

    def add_tokens(self, response: dict) -> None:
        usage = response.get("usage") or {}
        self.input_tokens += int(usage.get("prompt_tokens") or 0)
        self.output_tokens += int(usage.get("completion_tokens") or 0)

    def cost(self, price: Price | None) -> float | None:
        return estimate_cost(price, self.input_tokens, self.output_tokens)

    def to_dict(self, price: Price | None = None) -> dict:
        wall = time.monotonic() - self.started
        cost = self.cost(price)
        return {
            "requests_sent": self.requests_sent,
            "responses": self.responses,
            "cache_hits": self.cache_hits,
            "retries": dict(sorted(self.retries.items())),
            "request_failures": dict(sorted(self.failures.items())),
            "invalid_output_reasks": dict(sorted(self.reasks.items())),
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "estimated_cost_usd": None if cost is None else round(cost, 6),
            "requests_wall_s": round(wall, 3),  # the request engine's own clock, for requests_per_s
            "requests_per_s": round(self.requests_sent / wall, 3) if wall > 0 else 0.0,
        }


BATCH_DISCOUNT = 0.5  # the OpenAI (and Azure) Batch API bills input and output at half the online rate


def estimate_cost(price: Price | None, input_tokens: float, output_tokens: float) -> float | None:
    if price is None:
        return None
    return input_tokens / 1e6 * price.input_per_1m + output_tokens / 1e6 * price.output_per_1m


def rate_for(price: Price | None, mode: str) -> Price | None:
    """The price a request is billed at: ``prices`` list online rates; ``mode: batch`` pays half of them."""
    if price is None or mode != "batch":
        return price
    return Price(
        input_per_1m=price.input_per_1m * BATCH_DISCOUNT, output_per_1m=price.output_per_1m * BATCH_DISCOUNT
    )


_SNAPSHOT = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{4})")


def price_key(prices: Mapping[str, Price], model: str) -> str | None:
    """The price-table key for ``model``: the exact name, else the name without a dated-snapshot suffix.

    The provider's snapshot rule: ``gpt-4o-2024-08-06`` (or ``gpt-4-0613``) is priced as ``gpt-4o``
    (``gpt-4``) unless the table lists the snapshot itself. Nothing else matches: ``gpt-4o-mini``
    and ``gpt-4o-typo`` are not ``gpt-4o``, and a model with no key has no price.
    """
    if model in prices:
        return model
    for key in prices:
        if model.startswith(key) and _SNAPSHOT.fullmatch(model[len(key) :]):
            return key
    return None


def price_for(prices: Mapping[str, Price], model: str) -> Price | None:
    key = price_key(prices, model)
    return None if key is None else prices[key]


def no_price_note(section: str, model: str, prices: Mapping[str, Price]) -> str:
    known = ", ".join(sorted(prices)) or "none"
    return (
        f"no price for model {model!r} in {section}.prices (priced: {known}); cost is not estimated. "
        f"Add {section}.prices.{model}: {{input_per_1m: ..., output_per_1m: ...}}"
    )


def summary_line(
    section: str, written: int, what: str, failed_by_reason: Mapping[str, int], m: Mapping
) -> str:
    """One line for the end of a stage: written, failed by reason, requests sent and cached, cost."""
    failed = sum(failed_by_reason.values())
    reasons = ", ".join(
        f"{r} {n}" for r, n in sorted(failed_by_reason.items(), key=lambda kv: (-kv[1], kv[0]))
    )
    cost = m.get("estimated_cost_usd")
    if m.get("mode") == "offline":
        cost_text = "cost $0 (offline)"
    elif cost is None:
        cost_text = f"cost unknown (no price for {m.get('model')!r})"
    else:
        cost_text = f"cost ${cost:.4f}"
    reasks = sum((m.get("invalid_output_reasks") or {}).values())
    return (
        f"[{section}] {written} {what} written, {failed} failed"
        + (f" ({reasons})" if reasons else "")
        + f"; {m.get('requests_sent', 0)} requests sent, {m.get('cache_hits', 0)} cached"
        + (f", {reasks} re-asked" if reasks else "")
        + f"; {cost_text}"
    )


def offline_metrics() -> dict:
    """Accounting of an offline stand-in backend: it sends nothing and costs nothing."""
    return {
        "mode": "offline",
        "requests_sent": 0,
        "cache_hits": 0,
        "input_tokens": 0,
        "output_tokens": 0,
        "estimated_cost_usd": 0.0,
    }


def offline_dry_run(stage: str, backend: str, what: str) -> dict:
    """The dry run of an offline backend (``what`` names it): no requests, no cost."""
    return {
        "stage": stage,
        "backend": backend,
        "requests": 0,
        "estimated_cost_usd": 0.0,
        "note": f"offline {what}: no requests, no cost",
    }


def dry_run_estimate(
    requests,
    cache: RequestCache,
    price,
    sp: GenerateParams | JudgeParams,
    figures: int,
    drops: Drops,
    section: str,
    late_skips: list[dict] = (),
) -> dict:
    """Shared by generate and judge dry runs; ``late_skips``: images found unreadable while requests are built."""
    n = hits = tok_in = tok_out = 0
    for req in requests:
        if req.key in cache:
            hits += 1
            continue
        n += 1
        tok_out += sp.max_tokens
        tok_in += req.est_tokens - sp.max_tokens
    listed, price = price, rate_for(price, sp.mode)
    cost_in = None if price is None else tok_in / 1e6 * price.input_per_1m
    cost_out = None if price is None else tok_out / 1e6 * price.output_per_1m
    return {
        "stage": section,
        "backend": sp.backend,
        "model": sp.model,
        "mode": sp.mode,
        "figures": figures,
        **_with_late(drops, late_skips).metrics(),
        "requests_to_send": n,
        "cached": hits,
        "estimated_input_tokens": tok_in,
        "estimated_output_tokens_max": tok_out,
        "estimated_cost_usd_max": None if price is None else round(cost_in + cost_out, 4),
        "estimated_cost_usd_input": None if price is None else round(cost_in, 4),
        "price": None if price is None else price.model_dump(),
        "price_listed": None if listed is None else listed.model_dump(),
        "price_known": price is not None,
        "note": (
            "first attempts only (invalid-output retries come on top); output at max_tokens is an upper bound"
            + ("; batch mode: priced at the Batch API's half rate" if sp.mode == "batch" and price else "")
            + ("" if price else "; " + no_price_note(section, sp.model, sp.prices))
        ),
    }


def _with_late(drops: Drops, late_skips: list[dict]) -> Drops:
    for skip in late_skips:
        drops.add(skip["reason"], skip["pair_id"], skip.get("detail", ""))
    return drops
