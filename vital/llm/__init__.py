"""The one client layer for model-facing calls (generation and judging).

- :mod:`client`   – backend registry (``openai``, ``azure``), key from the environment only, preflight checks
- :mod:`cache`    – content-addressed, append-only SQLite (WAL) response cache
- :mod:`limiter`  – process-wide RPM/TPM limiter primed from ``x-ratelimit-*`` headers
- :mod:`engine`   – async engine: cache, limiter, bounded concurrency, retries with backoff
- :mod:`batch`    – Batch API mode feeding the same cache, with a resumable manifest
- :mod:`prompts`  – generation and judge prompts, demonstrations, image data URLs
- :mod:`parse`    – conversation and score parsing, conversation validation
- :mod:`runtime`  – what a stage needs: checked config, engine or batch runner, accounting
"""

from vital.llm.cache import RequestCache, request_key
from vital.llm.client import ConfigError
from vital.llm.engine import Engine, Outcome, Request
from vital.llm.limiter import RateLimiter, shared_limiter

__all__ = [
    "ConfigError",
    "Engine",
    "Outcome",
    "RateLimiter",
    "Request",
    "RequestCache",
    "request_key",
    "shared_limiter",
]
