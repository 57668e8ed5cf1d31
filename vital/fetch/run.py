"""A fetch run: staged figures into shards in input order, the index, the report, the summary; resumable."""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import shutil
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vital.fetch import shards as shard_files
from vital.fetch.http import download
from vital.fetch.inputs import read_url_records
from vital.fetch.options import FetchOptions, Figure, Permanent
from vital.fetch.packages import _src, _staged, extract
from vital.io import read_json, write_json, write_jsonl
from vital.progress import progress
from vital.ratelimit import HostRateLimiter

STAGING = ".staging"
DOWNLOADS = ".downloads"


@dataclass
class _State:
    figures: list[Figure]
    shards: list[list[Figure]]
    staging: Path
    keep_staged: bool = False
    failed: dict[str, Permanent] = field(default_factory=dict)
    resolved: set[str] = field(default_factory=set)
    manifests: dict[int, dict] = field(default_factory=dict)


def fetch_images(urls_file: Path, out: Path, opts: FetchOptions | None = None) -> dict[str, Any]:
    """Fetch every figure of ``urls_file`` into shards under ``out``; returns the summary. The figures
    fetched can be none: the caller decides whether that fails (``vital fetch-images`` exits 1)."""
    opts = opts or FetchOptions()
    opts.check()
    figures, refused, lines = read_url_records(urls_file)
    return fetch_figures(figures, refused, lines, out, opts)


def fetch_figures(
    figures: list[Figure],
    refused: list[dict],
    lines: int,
    out: Path,
    opts: FetchOptions,
    ref_prefix: str | None = None,
) -> dict[str, Any]:
    """:func:`fetch_images` after the input is read; ``ref_prefix`` is the folder name the index's refs
    start with (default: ``out``'s name; refs are relative to ``out``'s parent)."""
    start = time.perf_counter()
    for i, fig in enumerate(figures):
        fig.shard = i // opts.shard_size
    shards = [figures[i : i + opts.shard_size] for i in range(0, len(figures), opts.shard_size)]
    out.mkdir(parents=True, exist_ok=True)
    shard_files.remove_leftovers(out)
    settings = {"shard_size": opts.shard_size, "max_side": opts.max_side}
    if (out / shard_files.SETTINGS).is_file() and (old := read_json(out / shard_files.SETTINGS)) != settings:
        raise ValueError(
            f"fetch-images: {out} was written with --shard-size {old.get('shard_size')} --max-side "
            f"{old.get('max_side')}; rerun with those, or use another --out"
        )
    write_json(out / shard_files.SETTINGS, settings)
    staging = opts.staging or out / STAGING
    downloads = opts.downloads or out / DOWNLOADS
    staging.mkdir(parents=True, exist_ok=True)
    for part in [*staging.glob(".member.*.part"), *staging.glob(".*.tmp")]:  # a killed run's, never complete
        part.unlink(missing_ok=True)
    st = _State(figures, shards, staging, keep_staged=opts.staging is not None)
    for i in range(len(shards)):
        m = shard_files.shard_done(out, i, opts.verify, shards[i])
        if m is not None:
            st.manifests[i] = m
            st.resolved.update(f.pair_id for f in shards[i])
    skipped_shards = len(st.manifests)
    resumed = 0
    for fig in figures:
        if fig.pair_id not in st.resolved and (staging / fig.key).is_file():
            staged = _staged(staging, fig.key)
            if staged is None or staged[1].get("src") != _src(fig, opts):
                (staging / fig.key).unlink()  # staged by a run whose input or settings said otherwise
                continue
            st.resolved.add(fig.pair_id)
            resumed += 1
    # packages still needed, in order of their first figure
    packages: OrderedDict[str, dict[str, list[Figure]]] = OrderedDict()
    for fig in figures:
        if fig.pair_id not in st.resolved:
            packages.setdefault(fig.url, {}).setdefault(fig.member, []).append(fig)
    pending = {i for i in range(len(shards)) if i not in st.manifests}
    _flush(out, st, pending)  # shards whose figures were all staged before a kill

    downloads.mkdir(parents=True, exist_ok=True)
    limiter = HostRateLimiter(opts.rate)
    counts = {"packages_downloaded": 0, "attempts": 0}
    bar = progress(desc="fetch figures", total=len(figures), unit="fig")
    bar.update(len(st.resolved))
    todo = iter(packages.items())
    with cf.ThreadPoolExecutor(max_workers=opts.workers) as pool:
        running: dict[cf.Future, str] = {}

        def submit_more() -> None:
            while len(running) < 2 * opts.workers:
                try:
                    url, wanted = next(todo)
                except StopIteration:
                    return
                running[pool.submit(_package, url, wanted, opts, limiter, downloads, staging)] = url

        submit_more()
        while running:
            done, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
            for fut in done:
                url = running.pop(fut)
                attempts, downloaded, failed = fut.result()
                counts["attempts"] += attempts
                counts["packages_downloaded"] += downloaded
                st.failed.update(failed)
                figs = [f for fs in packages[url].values() for f in fs]
                st.resolved.update(f.pair_id for f in figs)
                bar.update(len(figs))
            _flush(out, st, pending)
            submit_more()
    bar.close()
    if opts.downloads is None:
        shutil.rmtree(downloads, ignore_errors=True)
    if pending:
        raise RuntimeError(f"fetch-images: shards {sorted(pending)[:5]} not complete (internal error)")
    if opts.staging is None:
        shutil.rmtree(staging, ignore_errors=True)
    manifests = [st.manifests[i] for i in range(len(shards))]
    prefix = ref_prefix or out.name
    n_index = shard_files.write_index(out, manifests, prefix)
    report = [*refused, *(f for m in manifests for f in m["failures"])]
    write_jsonl(out / shard_files.REPORT, report)
    reasons: dict[str, int] = {}
    for r in report:
        reasons[r["reason"]] = reasons.get(r["reason"], 0) + 1
    summary = {
        "input_lines": lines,
        "figures": len(figures),
        "fetched": n_index,
        "failed": len(report) - len(refused),
        "duplicates_skipped": sum(r["reason"] == "duplicate_pair_id" for r in refused),
        "lines_refused": len(refused),
        "by_reason": dict(sorted(reasons.items())),
        "shards": len(shards),
        "shard_size": opts.shard_size,
        "max_side": opts.max_side,
        "packages": len({f.url for f in figures}),
    }
    write_json(out / shard_files.SUMMARY, summary)
    shard_files.remove_leftovers(out)
    return {
        **summary,
        "this_run": {
            "shards_skipped": skipped_shards,
            "figures_resumed_from_staging": resumed,
            "packages_wanted": len(packages),
            "packages_downloaded": counts["packages_downloaded"],
            "http_attempts": counts["attempts"],
            "wall_s": round(time.perf_counter() - start, 2),
        },
    }


def _package(
    url: str,
    wanted: dict[str, list[Figure]],
    opts: FetchOptions,
    limiter: HostRateLimiter,
    downloads: Path,
    staging: Path,
) -> tuple[int, bool, dict[str, Permanent]]:
    """Download one package, stage its wanted figures; (attempts, downloaded, failures)."""
    dest = downloads / hashlib.sha256(url.encode()).hexdigest()[:24]
    figs = [f for fs in wanted.values() for f in fs]
    deadline = time.monotonic() + opts.package_s
    try:
        attempts = download(url, dest, opts, limiter, deadline)
    except Permanent as e:
        dest.unlink(missing_ok=True)
        attempts = opts.retries + 1 if e.reason == "retries_exhausted" else 1
        return attempts, False, {f.pair_id: e for f in figs}
    try:
        return attempts, True, extract(dest, wanted, opts, staging, deadline)
    finally:
        dest.unlink(missing_ok=True)


def _flush(out: Path, st: _State, pending: set[int]) -> None:
    """Write every pending shard whose figures are all resolved, lowest first."""
    for i in sorted(pending):
        if all(f.pair_id in st.resolved for f in st.shards[i]):
            missing = [
                f for f in st.shards[i] if f.pair_id not in st.failed and not (st.staging / f.key).is_file()
            ]
            if missing:
                raise RuntimeError(f"fetch-images: {missing[0].pair_id} resolved but not staged")
            st.manifests[i] = shard_files.write_shard(
                out, i, st.shards[i], st.staging, st.failed, st.keep_staged
            )
            pending.discard(i)
