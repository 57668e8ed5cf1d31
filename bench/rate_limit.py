"""Benchmark: generate's engine against a server whose limit is below ``client.rpm`` (issue 25, items 9-10).

Starts the local OpenAI-compatible test server in a separate process with a limit of ``--limit`` requests
per minute that it does not advertise in ``x-ratelimit-*`` headers, then sends ``--requests`` uncached chat
requests through vital's engine told ``--rpm`` (5 times the limit by default), as generate does. Two kinds of
limit:

- ``window``: a fixed 60 s window (``--limit`` requests, then 429 until the next window), with and without a
  ``retry-after`` saying when it reopens. Ideal wall time: the first window's answers at once, then one
  window per ``--limit`` requests, ``(requests / limit - 1) * 60`` s. Reported: wall / ideal.
- ``refill``: a token bucket refilling at ``--limit`` a minute (one second of burst), ``retry-after: 0.2``.
  Reported: the rate of answers after the first burst of 429s, as a fraction of the limit.

    python bench/rate_limit.py                          # limit 120/min, rpm 600, 240 requests: ~7 min
    python bench/rate_limit.py --kinds refill --requests 120
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import openai

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vital.llm.cache import RequestCache  # noqa: E402
from vital.llm.engine import Engine, Request, RetryPolicy  # noqa: E402
from vital.llm.limiter import RateLimiter  # noqa: E402

KINDS = {
    "window": ["--window-s", "60", "--retry-after", "none", "--window-retry-after"],
    "window-no-retry-after": ["--window-s", "60", "--retry-after", "none"],
    "refill": ["--retry-after", "0.2"],
}


def _requests(n: int) -> list[Request]:
    return [
        Request(
            {"model": "bench", "messages": [{"role": "user", "content": f"q {i}"}], "seed": i}, est_tokens=100
        )
        for i in range(n)
    ]


async def _run(
    base_url: str, n: int, rpm: int, concurrency: int, cache_dir: str
) -> tuple[Engine, list, float]:
    async with openai.AsyncOpenAI(
        api_key="bench-key", base_url=base_url, timeout=30, max_retries=0
    ) as client:
        limiter = RateLimiter(rpm, 10_000_000)
        eng = Engine(client, limiter, RequestCache(cache_dir), concurrency=concurrency, retry=RetryPolicy())
        ok_times: list[float] = []
        succeeded = limiter.succeeded

        def record() -> None:  # every success, timed (the limiter keeps only recent ones)
            ok_times.append(time.monotonic())
            succeeded()

        limiter.succeeded = record
        t0 = time.monotonic()
        out = await eng.arun(_requests(n), desc="engine")
        return eng, [t - t0 for t in ok_times], time.monotonic() - t0, out


def bench(kind: str, limit: int, rpm: int, n: int, concurrency: int) -> dict:
    rpm_arg = ["--rpm", str(limit)] if kind == "refill" else ["--window-limit", str(limit)]
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.openai_server",
            "--latency",
            "0.05",
            "--no-advertise",
            "--seconds",
            "1200",
        ]
        + rpm_arg
        + KINDS[kind],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        base_url = f"http://127.0.0.1:{int(server.stdout.readline())}/v1"
        with tempfile.TemporaryDirectory() as cache_dir:
            eng, ok_times, wall, out = asyncio.run(_run(base_url, n, rpm, concurrency, cache_dir))
    finally:
        server.terminate()
        server.wait(timeout=10)
    result = {
        "kind": kind,
        "server_limit_per_min": limit,
        "client_rpm": rpm,
        "requests": n,
        "answered": sum(o.ok for o in out),
        "failed": dict(eng.usage.failures),
        "wall_s": round(wall, 1),
        "429s": eng.usage.retries.get("rate_limited", 0),
        "rate_decreases": eng.limiter.decreases,
        "lowest_rpm": round(eng.limiter.lowest_rpm, 1),
    }
    if kind.startswith("window"):
        ideal = (n / limit - 1) * 60
        result |= {"ideal_s": ideal, "wall_over_ideal": round(wall / ideal, 3)}
    else:
        # the burst: the first second's bucket, then 429s; the rate counts every answer after that second
        after = [t for t in ok_times if t >= 1.0]
        span = (after[-1] - 1.0) if after else 0.0
        result["rate_fraction_after_burst"] = round(len(after) / (limit / 60 * span), 3) if span else None
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=120, help="the server's requests per minute")
    ap.add_argument("--rpm", type=int, default=600, help="client.rpm")
    ap.add_argument("--requests", type=int, default=240)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--kinds", nargs="+", default=list(KINDS), choices=list(KINDS))
    ap.add_argument("--out", type=Path, default=None, help="also write the results JSON here")
    args = ap.parse_args()
    results = []
    for kind in args.kinds:
        results.append(bench(kind, args.limit, args.rpm, args.requests, args.concurrency))
        print(json.dumps(results[-1]), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
