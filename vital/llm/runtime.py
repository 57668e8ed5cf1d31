"""Everything a stage needs to send model-facing requests: checked config, client, cache, shared
limiter, and the online engine or the batch runner, with one set of accounting."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from vital.llm.accounting import Usage, no_price_note, price_key
from vital.llm.batch import BatchLimits, BatchRunner
from vital.llm.cache import CacheError, RequestCache
from vital.llm.client import check_reachable, limiter_scope, make_client
from vital.llm.engine import Engine, Outcome, Request, RetryPolicy
from vital.llm.limiter import RateLimiter, shared_limiter
from vital.params import ClientParams, Price


class LLMRuntime:
    def __init__(
        self,
        section: str,
        backend: str,
        model: str,
        client: ClientParams,
        prices: dict[str, Price],
        cache_dir: Path,
        mode: str = "online",
        batch: BatchLimits | None = None,
    ) -> None:
        self.section, self.backend, self.model, self.cp, self.mode = section, backend, model, client, mode
        self.price_key = price_key(prices, model)
        self.price = None if self.price_key is None else prices[self.price_key]
        self.price_note = None if self.price is not None else no_price_note(section, model, prices)
        self.limiter: RateLimiter | None = None
        self.cache_dir = Path(client.cache_dir) if client.cache_dir else Path(cache_dir)
        self.batch_limits = batch or BatchLimits()
        self.usage = Usage()
        self.cache: RequestCache | None = None

    @classmethod
    def of(cls, section: str, sp, cache_dir: Path, batch: BatchLimits | None = None) -> LLMRuntime:
        """The runtime of the params section ``section`` (``sp``: its backend, model, client, prices and, where
        it has one, mode)."""
        mode = getattr(sp, "mode", "online")
        return cls(section, sp.backend, sp.model, sp.client, sp.prices, cache_dir, mode, batch)

    def open_cache(self) -> RequestCache:
        if self.cache is None:
            try:
                self.cache = RequestCache(self.cache_dir)
            except CacheError as e:
                raise CacheError(f"{self.section}.client.cache_dir: {e}") from None
        return self.cache

    def preflight(self) -> None:
        """Fail before the first paid request: key present, backend known, endpoint reachable, cache writable."""
        make_client(
            self.backend, self.cp, self.section
        )  # key present, backend known, Azure settings complete
        check_reachable(self.cp, self.section)
        self.open_cache()
        if self.price_note:
            print(f"[{self.section}] warning: {self.price_note}", file=sys.stderr)

    def send(self, requests: list[Request], desc: str) -> list[Outcome]:
        """Answer requests (cache, then API); one event loop and one SDK client per call."""
        assert self.cache is not None, "call preflight() first"
        return asyncio.run(self._send(requests, desc))

    async def _send(self, requests: list[Request], desc: str) -> list[Outcome]:
        # the SDK's connection pool belongs to the loop it first ran in, so each loop gets its own client
        async with make_client(self.backend, self.cp, self.section) as client:
            if self.mode == "batch":
                if self.backend == "azure":
                    self.batch_limits.url = "/chat/completions"
                manifest = self.cache_dir / "batches" / f"{self.section}.json"
                runner = BatchRunner(
                    client, self.cache, manifest, self.batch_limits, self.usage, self.section, self.cp
                )
                return await runner.arun(requests)
            self.limiter = shared_limiter(limiter_scope(self.backend, self.cp), self.cp.rpm, self.cp.tpm)
            engine = Engine(
                client,
                self.limiter,
                self.cache,
                concurrency=self.cp.concurrency,
                retry=RetryPolicy(
                    max_retries=self.cp.max_retries, rate_limit_wait_s=self.cp.rate_limit_wait_s
                ),
                usage=self.usage,
                client_params=self.cp,
                cost_fn=lambda u: u.cost(self.price),
                section=self.section,
            )
            return await engine.arun(requests, desc=desc)

    def metrics(self) -> dict:
        m = {
            "mode": self.mode,
            **self.usage.to_dict(self.price),
            "price_known": self.price is not None,
            "price_model": self.price_key,
        }
        if self.price_note:
            m["price_note"] = self.price_note
        if self.limiter is not None:
            lim = self.limiter
            m["rate_limiter"] = {
                "rpm_configured": lim.configured_rpm,
                "rpm_ceiling": lim.ceiling_rpm,
                "rpm_lowest": round(lim.lowest_rpm, 3),
                "rpm_final": round(lim.rpm, 3),
                "lowered_on_429": lim.decreases,
                "pauses": lim.pauses,
            }
        return m
