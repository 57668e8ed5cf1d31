"""Counters for model-facing work: requests, cache hits, retries, failures, tokens, cost."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

from vital.params import Price


@dataclass
class Usage:
    requests_sent: int = 0
    responses: int = 0
    cache_hits: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    retries: Counter = field(default_factory=Counter)
    failures: Counter = field(default_factory=Counter)
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
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "estimated_cost_usd": None if cost is None else round(cost, 6),
            "wall_s": round(wall, 3),
            "requests_per_s": round(self.requests_sent / wall, 3) if wall > 0 else 0.0,
        }


def estimate_cost(price: Price | None, input_tokens: float, output_tokens: float) -> float | None:
    if price is None:
        return None
    return input_tokens / 1e6 * price.input_per_1m + output_tokens / 1e6 * price.output_per_1m


def price_for(prices: dict[str, Price], model: str) -> Price | None:
    """Exact model name first, then the longest price-table key the model name starts with."""
    if model in prices:
        return prices[model]
    best = max((k for k in prices if model.startswith(k)), key=len, default=None)
    return prices[best] if best else None


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
