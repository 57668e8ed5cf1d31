"""Benchmark: engine throughput against a requests-per-minute limit vs. one request at a time.

Starts the local OpenAI-compatible test server in a separate process (200 ms latency, an RPM
limit enforced with 429s and x-ratelimit-* headers), then sends N uncached chat requests through
vital's engine (shared limiter, bounded concurrency, retries) and the same N one at a time with the
plain SDK. Reports requests/s, the fraction of the limit-bound rate, 429s, and wall time.

    python bench/generate.py                         # 2000 requests, 3000 rpm, 200 ms
    python bench/generate.py --requests 500 --baseline-requests 100
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
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


def _requests(n: int, tag: str) -> list[Request]:
    return [
        Request(
            {
                "model": "bench",
                "messages": [{"role": "user", "content": f"{tag} {i}"}],
                "max_tokens": 64,
                "seed": i,
            },
            est_tokens=100,
        )
        for i in range(n)
    ]


def _client(base_url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key="bench-key", base_url=base_url, timeout=30, max_retries=0)


async def _engine_run(base_url: str, n: int, rpm: int, concurrency: int, cache_dir: str) -> dict:
    async with _client(base_url) as client:
        eng = Engine(
            client,
            RateLimiter(rpm, 10_000_000),
            RequestCache(cache_dir),
            concurrency=concurrency,
            retry=RetryPolicy(max_retries=6),
        )
        t0 = time.perf_counter()
        out = await eng.arun(_requests(n, "engine"), desc="engine")
        wall = time.perf_counter() - t0
    ok = sum(o.ok for o in out)
    return {
        "requests": n,
        "ok": ok,
        "wall_s": round(wall, 2),
        "requests_per_s": round(ok / wall, 2),
        "sent": eng.usage.requests_sent,
        "retries": dict(eng.usage.retries),
    }


async def _sequential_run(base_url: str, n: int) -> dict:
    async with _client(base_url) as client:
        t0 = time.perf_counter()
        ok = 0
        for req in _requests(n, "baseline"):
            try:
                await client.chat.completions.create(**req.body)
                ok += 1
            except openai.RateLimitError:
                await asyncio.sleep(1)
        wall = time.perf_counter() - t0
    return {"requests": n, "ok": ok, "wall_s": round(wall, 2), "requests_per_s": round(ok / wall, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--baseline-requests", type=int, default=None, help="default: the same as --requests")
    ap.add_argument("--rpm", type=int, default=3000)
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--out", type=Path, default=None, help="also write the result JSON here")
    args = ap.parse_args()
    base_n = args.requests if args.baseline_requests is None else args.baseline_requests

    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.openai_server",
            "--latency",
            str(args.latency),
            "--rpm",
            str(args.rpm),
            "--seconds",
            "1500",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        port = int(server.stdout.readline())
        base_url = f"http://127.0.0.1:{port}/v1"
        with tempfile.TemporaryDirectory() as cache_dir:
            engine = asyncio.run(_engine_run(base_url, args.requests, args.rpm, args.concurrency, cache_dir))
        time.sleep(1.5)  # let the server's bucket refill so the baseline starts on equal terms
        baseline = asyncio.run(_sequential_run(base_url, base_n))
    finally:
        server.send_signal(signal.SIGINT)
        tail = server.communicate(timeout=10)[0].strip().splitlines()
    limit_rps = args.rpm / 60
    # one second of burst is allowed by the server's bucket, so the limit-bound time is (n - burst) / rate
    bound_wall = max(args.latency, (args.requests - limit_rps) / limit_rps + args.latency)
    result = {
        "setup": {
            "requests": args.requests,
            "rpm_limit": args.rpm,
            "latency_s": args.latency,
            "concurrency": args.concurrency,
        },
        "limit_bound_requests_per_s": round(args.requests / bound_wall, 2),
        "engine": {
            **engine,
            "fraction_of_limit_bound": round(engine["requests_per_s"] * bound_wall / args.requests, 3),
        },
        "one_at_a_time": {
            **baseline,
            "fraction_of_limit_bound": round(baseline["requests_per_s"] * bound_wall / args.requests, 3),
        },
        "speedup": round(engine["requests_per_s"] / baseline["requests_per_s"], 1),
        "server": json.loads(tail[-1]) if tail else {},
    }
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
