"""``vital fetch-images``: PMC Open Access packages -> figures in WebDataset-style tar shards.

Input: LLaVA-Med's image-URL JSONL (``pair_id``, ``pmc_tar_url``, ``image_file_path``: the figure's path
inside the article's ``.tar.gz``). Each package is downloaded once however many figures it holds, only
the needed members are extracted, and figures go into shards of ``shard_size`` figures in input order:

    out/shard-00000.tar   samples <key>.jpg|png + <key>.json ({"pair_id", "pmc_tar_url", ...})
    out/shard-00000.json  that shard's manifest (members, offsets, sha256, failures); written last
    out/index.parquet     pair_id -> shard, member, ref, size, sha256, width, height
    out/report.jsonl      one line per figure not fetched: pair_id, url, reason, detail
    out/summary.json      counts by outcome and reason
    out/fetch.json        --shard-size and --max-side (a rerun with others is refused)

Which figure goes into which shard depends only on the input, never on download timing, so a run that
was killed and rerun writes the same bytes as one that was not. A shard counts as done when its manifest
exists and the tar's sha256 matches it; a rerun skips done shards and figures already extracted
(``out/.staging``). Transient errors (connection reset, timeouts, 5xx, 429, a body shorter than its
Content-Length) are retried with exponential backoff; permanent ones (404/410 and other 4xx, a
truncated or corrupt archive, a member missing from the package, an undecodable image) are reported and
the figure is left out. A permanent failure is final for a done shard: delete the shard's ``.json`` to
try its figures again.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import http.client
import io
import json
import os
import random
import shutil
import socket
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from vital.io import RecordError, read_json, read_jsonl, write_json, write_jsonl
from vital.progress import progress
from vital.shards import ShardWriter, file_sha256, make_ref, sample_key

INDEX = "index.parquet"
REPORT = "report.jsonl"
SUMMARY = "summary.json"
SETTINGS = "fetch.json"  # what decides shard contents: a rerun must use the same
STAGING = ".staging"
DOWNLOADS = ".downloads"
_REQUIRED = ("pair_id", "pmc_tar_url", "image_file_path")


@dataclass
class FetchOptions:
    shard_size: int = 2000
    workers: int = 8
    rate: float = 3.0  # requests per second per host
    retries: int = 5
    backoff: float = 1.0  # seconds, doubled each retry (with jitter)
    timeout: float = 60.0
    max_side: int | None = None  # downscale so the longer side is at most this (None: keep bytes as served)
    verify: bool = True  # rehash done shards on a rerun
    user_agent: str = "vital-fetch-images (+https://github.com/; polite, rate-limited)"

    def check(self) -> None:
        for name in ("shard_size", "workers", "retries"):
            if getattr(self, name) < (0 if name == "retries" else 1):
                raise ValueError(f"fetch-images: --{name.replace('_', '-')} must be positive")
        if self.rate <= 0 or self.timeout <= 0 or self.backoff < 0:
            raise ValueError("fetch-images: --rate and --timeout must be > 0, --backoff >= 0")
        if self.max_side is not None and self.max_side < 8:
            raise ValueError(f"fetch-images: --max-side {self.max_side} is too small (>= 8, or omit it)")


@dataclass
class Figure:
    pair_id: str
    url: str
    member: str
    key: str
    shard: int


class Permanent(Exception):
    """A failure that retrying will not fix; ``reason`` is a short code for the report."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


class _Transient(Exception):
    pass


# ---------------------------------------------------------------- input
def read_url_records(path: Path) -> tuple[list[Figure], list[dict], int]:
    """Unique figures in input order (shard numbers not yet set), the duplicates, and the line count.

    A record missing a field is an error naming file:line; a repeated pair_id (LLaVA-Med's URL file has
    some, microsoft/LLaVA-Med#47) keeps the first and is reported."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: image-URL file not found")
    seen: dict[str, int] = {}
    first_line: dict[str, int] = {}
    figures: list[Figure] = []
    dups: list[dict] = []
    keys: dict[str, str] = {}
    n = 0
    for n, rec in enumerate(read_jsonl(path), 1):
        missing = [k for k in _REQUIRED if not isinstance(rec.get(k), str) or not rec.get(k)]
        if missing:
            raise RecordError(f"{path}:{n}: missing or empty {', '.join(missing)}")
        pid = rec["pair_id"]
        if pid in seen:
            same = figures[seen[pid]]
            dups.append(
                {
                    "pair_id": pid,
                    "url": rec["pmc_tar_url"],
                    "reason": "duplicate_pair_id",
                    "detail": f"{path.name}:{n} repeats line {first_line[pid]}"
                    + (
                        ""
                        if (same.url, same.member) == (rec["pmc_tar_url"], rec["image_file_path"])
                        else " with a different figure"
                    ),
                }
            )
            continue
        key = sample_key(pid)
        if key in keys:
            raise RecordError(f"{path}:{n}: pair_id {pid!r} and {keys[key]!r} map to the same key {key!r}")
        keys[key] = pid
        seen[pid], first_line[pid] = len(figures), n
        figures.append(Figure(pid, rec["pmc_tar_url"], rec["image_file_path"], key, -1))
    if not figures:
        raise RecordError(f"{path}: no records")
    return figures, dups, n


# ---------------------------------------------------------------- http
class HostRateLimiter:
    """At most ``rate`` request starts per second to each host, across all threads."""

    def __init__(self, rate: float):
        self.interval = 1.0 / rate
        self._lock = threading.Lock()
        self._next: dict[str, float] = {}

    def wait(self, url: str) -> None:
        host = urllib.parse.urlsplit(url).netloc
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next.get(host, now))
            self._next[host] = slot + self.interval
        if slot > now:
            time.sleep(slot - now)


def download(url: str, dest: Path, opts: FetchOptions, limiter: HostRateLimiter) -> int:
    """GET ``url`` into ``dest`` with retries; returns the number of attempts. Raises Permanent."""
    last = ""
    for attempt in range(opts.retries + 1):
        if attempt:
            delay = opts.backoff * 2 ** (attempt - 1)
            time.sleep(delay * (0.5 + random.random()))
        limiter.wait(url)
        try:
            _get_once(url, dest, opts)
            return attempt + 1
        except _Transient as e:
            last = str(e)
    raise Permanent("retries_exhausted", f"{opts.retries + 1} attempts, last: {last}")


def _get_once(url: str, dest: Path, opts: FetchOptions) -> None:
    req = urllib.request.Request(url, headers={"User-Agent": opts.user_agent})
    try:
        with urllib.request.urlopen(req, timeout=opts.timeout) as resp, dest.open("wb") as f:
            expected = resp.headers.get("Content-Length")
            got = 0
            while chunk := resp.read(1 << 20):
                f.write(chunk)
                got += len(chunk)
            if expected is not None and got != int(expected):
                raise _Transient(f"short body: {got} of {expected} bytes")
    except urllib.error.HTTPError as e:
        if e.code >= 500 or e.code in (408, 429):
            raise _Transient(f"HTTP {e.code}") from None
        reason = {404: "not_found", 410: "withdrawn"}.get(e.code, f"http_{e.code}")
        raise Permanent(reason, f"HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        if isinstance(e.reason, (ConnectionError, TimeoutError, socket.timeout, OSError)):
            raise _Transient(f"{type(e.reason).__name__}: {e.reason}") from None
        raise Permanent("bad_url", str(e.reason)) from None
    except (ConnectionError, TimeoutError, http.client.HTTPException, OSError) as e:
        raise _Transient(f"{type(e).__name__}: {e}") from None


# ---------------------------------------------------------------- extract
def _image_bytes(data: bytes, member: str, max_side: int | None) -> tuple[bytes, str, int, int]:
    """Decoded once to prove it is a whole image; bytes kept as served unless resized or not JPEG/PNG."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            fmt, w, h = im.format, im.width, im.height
            if fmt in ("JPEG", "PNG") and (max_side is None or max(w, h) <= max_side):
                return data, "jpg" if fmt == "JPEG" else "png", w, h
            if max_side is not None and max(w, h) > max_side:
                s = max_side / max(w, h)
                im = im.resize((max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.LANCZOS)
            buf = io.BytesIO()
            if fmt == "JPEG":
                im.convert("RGB").save(buf, "JPEG", quality=90)
                ext = "jpg"
            else:
                (im if im.mode in ("RGB", "RGBA", "L", "LA", "P") else im.convert("RGB")).save(buf, "PNG")
                ext = "png"
            return buf.getvalue(), ext, im.width, im.height
    except UnidentifiedImageError:
        raise Permanent("bad_image", f"{member}: not an image PIL can identify") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise Permanent("bad_image", f"{member}: {type(e).__name__}: {e}") from None


def extract(package: Path, wanted: dict[str, list[Figure]], opts: FetchOptions, staging: Path) -> dict:
    """Stream through the package once; stage each wanted member. Returns pair_id -> Permanent for the
    figures that failed (missing member, bad image, truncated archive)."""
    failed: dict[str, Permanent] = {}
    left = dict(wanted)
    try:
        with tarfile.open(package, "r|gz") as tf:
            for m in tf:
                name = m.name[2:] if m.name.startswith("./") else m.name
                if name not in left or not m.isfile():
                    continue
                data = tf.extractfile(m).read()
                for fig in left.pop(name):
                    try:
                        _stage(fig, data, opts, staging)
                    except Permanent as e:
                        failed[fig.pair_id] = e
                if not left:
                    break
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        for figs in left.values():
            for fig in figs:
                failed[fig.pair_id] = Permanent("truncated_archive", f"{type(e).__name__}: {e}")
        return failed
    for member, figs in left.items():
        for fig in figs:
            failed[fig.pair_id] = Permanent("member_missing", f"{member} not in the package")
    return failed


def _stage(fig: Figure, data: bytes, opts: FetchOptions, staging: Path) -> None:
    body, ext, w, h = _image_bytes(data, fig.member, opts.max_side)
    meta = {"ext": ext, "width": w, "height": h, "src": f"{fig.url}#{fig.member}"}
    tmp = staging / f".{fig.key}.tmp"
    tmp.write_bytes(json.dumps(meta).encode() + b"\n" + body)
    os.replace(tmp, staging / fig.key)  # present = complete


def _staged(staging: Path, key: str) -> tuple[bytes, dict] | None:
    p = staging / key
    if not p.is_file():
        return None
    raw = p.read_bytes()
    head, _, body = raw.partition(b"\n")
    return body, json.loads(head)


# ---------------------------------------------------------------- shards
def shard_name(i: int) -> str:
    return f"shard-{i:05d}"


def shard_done(out: Path, i: int, verify: bool, figs: list[Figure]) -> dict | None:
    """The manifest of shard ``i`` if the shard is complete (its tar matches the manifest) and holds the
    figures the input now puts there, else None."""
    man, tar = out / f"{shard_name(i)}.json", out / f"{shard_name(i)}.tar"
    if not man.is_file() or not tar.is_file():
        return None
    try:
        m = read_json(man)
    except (RecordError, OSError):
        return None
    listed = {r["pair_id"] for r in m.get("figures", []) + m.get("failures", [])}
    if listed != {f.pair_id for f in figs} or tar.stat().st_size != m.get("bytes"):
        return None
    if verify and file_sha256(tar) != m.get("sha256"):
        return None
    return m


def write_shard(out: Path, i: int, figs: list[Figure], staging: Path, failed: dict[str, Permanent]) -> dict:
    """Shard ``i`` from the staged figures (in input order), then its manifest; both atomic."""
    tar = out / f"{shard_name(i)}.tar"
    w = ShardWriter(tar)
    rows, failures = [], []
    try:
        for fig in figs:
            if fig.pair_id in failed:
                e = failed[fig.pair_id]
                failures.append(
                    {
                        "pair_id": fig.pair_id,
                        "url": fig.url,
                        "member": fig.member,
                        "reason": e.reason,
                        "detail": e.detail,
                    }
                )
                continue
            body, meta = _staged(staging, fig.key)  # type: ignore[misc]
            meta = {k: v for k, v in meta.items() if k != "src"}
            sample = {"pair_id": fig.pair_id, "pmc_tar_url": fig.url, "image_file_path": fig.member, **meta}
            entry = w.add(fig.key, meta["ext"], body, sample)
            rows.append({"pair_id": fig.pair_id, "width": meta["width"], "height": meta["height"], **entry})
        digest = w.commit()
    except BaseException:
        w.abort()
        raise
    manifest = {
        "shard": tar.name,
        "sha256": digest,
        "bytes": tar.stat().st_size,
        "figures": rows,
        "failures": failures,
    }
    write_json(out / f"{shard_name(i)}.json", manifest)
    for fig in figs:
        (staging / fig.key).unlink(missing_ok=True)
    return manifest


def write_index(out: Path, manifests: list[dict]) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = []
    for m in manifests:
        for r in m["figures"]:
            rows.append(
                {
                    "pair_id": r["pair_id"],
                    "shard": m["shard"],
                    "member": r["member"],
                    "ref": make_ref(f"{out.name}/{m['shard']}", r["member"]),
                    "offset": r["offset"],
                    "size": r["size"],
                    "sha256": r["sha256"],
                    "width": r["width"],
                    "height": r["height"],
                }
            )
    schema = pa.schema(
        [
            ("pair_id", pa.string()),
            ("shard", pa.string()),
            ("member", pa.string()),
            ("ref", pa.string()),
            ("offset", pa.int64()),
            ("size", pa.int64()),
            ("sha256", pa.string()),
            ("width", pa.int32()),
            ("height", pa.int32()),
        ]
    )
    table = pa.Table.from_pylist(rows, schema=schema)
    fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{INDEX}.")
    os.close(fd)
    pq.write_table(table, tmp)
    os.replace(tmp, out / INDEX)
    return len(rows)


# ---------------------------------------------------------------- run
@dataclass
class _State:
    figures: list[Figure]
    shards: list[list[Figure]]
    staging: Path
    failed: dict[str, Permanent] = field(default_factory=dict)
    resolved: set[str] = field(default_factory=set)
    manifests: dict[int, dict] = field(default_factory=dict)


def fetch_images(urls_file: Path, out: Path, opts: FetchOptions | None = None) -> dict[str, Any]:
    """Fetch every figure of ``urls_file`` into shards under ``out``; returns the summary."""
    opts = opts or FetchOptions()
    opts.check()
    start = time.perf_counter()
    figures, dups, lines = read_url_records(urls_file)
    for i, fig in enumerate(figures):
        fig.shard = i // opts.shard_size
    shards = [figures[i : i + opts.shard_size] for i in range(0, len(figures), opts.shard_size)]
    out.mkdir(parents=True, exist_ok=True)
    settings = {"shard_size": opts.shard_size, "max_side": opts.max_side}
    if (out / SETTINGS).is_file() and (old := read_json(out / SETTINGS)) != settings:
        raise ValueError(
            f"fetch-images: {out} was written with --shard-size {old.get('shard_size')} --max-side "
            f"{old.get('max_side')}; rerun with those, or use another --out"
        )
    write_json(out / SETTINGS, settings)
    staging, downloads = out / STAGING, out / DOWNLOADS
    staging.mkdir(exist_ok=True)
    st = _State(figures, shards, staging)
    for i in range(len(shards)):
        m = shard_done(out, i, opts.verify, shards[i])
        if m is not None:
            st.manifests[i] = m
            st.resolved.update(f.pair_id for f in shards[i])
    skipped_shards = len(st.manifests)
    resumed = 0
    for fig in figures:
        if fig.pair_id not in st.resolved and (staging / fig.key).is_file():
            staged = _staged(staging, fig.key)
            if staged is None or staged[1].get("src") != f"{fig.url}#{fig.member}":
                (staging / fig.key).unlink()  # staged by a run whose input said otherwise
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

    downloads.mkdir(exist_ok=True)
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
    shutil.rmtree(downloads, ignore_errors=True)
    if pending:
        raise RuntimeError(f"fetch-images: shards {sorted(pending)[:5]} not complete (internal error)")
    shutil.rmtree(staging, ignore_errors=True)
    manifests = [st.manifests[i] for i in range(len(shards))]
    n_index = write_index(out, manifests)
    report = [*dups, *(f for m in manifests for f in m["failures"])]
    write_jsonl(out / REPORT, report)
    reasons: dict[str, int] = {}
    for r in report:
        reasons[r["reason"]] = reasons.get(r["reason"], 0) + 1
    summary = {
        "input_lines": lines,
        "figures": len(figures),
        "fetched": n_index,
        "failed": len(report) - len(dups),
        "duplicates_skipped": len(dups),
        "by_reason": dict(sorted(reasons.items())),
        "shards": len(shards),
        "shard_size": opts.shard_size,
        "max_side": opts.max_side,
        "packages": len({f.url for f in figures}),
    }
    write_json(out / SUMMARY, summary)
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
    try:
        attempts = download(url, dest, opts, limiter)
    except Permanent as e:
        dest.unlink(missing_ok=True)
        attempts = opts.retries + 1 if e.reason == "retries_exhausted" else 1
        return attempts, False, {f.pair_id: e for f in figs}
    try:
        return attempts, True, extract(dest, wanted, opts, staging)
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
            st.manifests[i] = write_shard(out, i, st.shards[i], st.staging, st.failed)
            pending.discard(i)
