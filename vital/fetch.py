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

Hostile input is bounded while streaming (FetchOptions, and the ``fetch`` params section): bytes per
package (``max_package_bytes``, counted as they arrive, so a body without Content-Length cannot fill the
disk), seconds per package (``package_s``: download, retries and extraction together, so a trickling body
ends), bytes per member (``max_member_bytes``, from the member's header, before it is inflated: a
zip-bomb or sparse member is refused unread) and pixels per image (``max_pixels``, from the image header,
before decoding). A member is copied to disk in chunks, never read whole into memory. Only http(s) URLs
are fetched, redirects included (followed by hand, each hop through the per-host rate limit); a 429 or
503 with ``Retry-After`` holds its host for that long. A bad input line (not JSON, not an object, a
missing field, a URL that is not http(s)) is listed in the report with its ``file:line`` and skipped.
"""

from __future__ import annotations

import concurrent.futures as cf
import datetime
import email.utils
import hashlib
import http.client
import io
import json
import os
import random
import re
import shutil
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from vital.failures import StageFailed
from vital.io import FILE_MODE, RecordError, read_json, write_json, write_jsonl
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
    max_package_bytes: int = 2 << 30  # one package, counted while it streams in
    max_member_bytes: int = 64 << 20  # one figure inside a package, from its tar header
    max_pixels: int = 50_000_000  # one figure, from its image header, before decoding
    package_s: float = 1800.0  # one package: download, retries and extraction
    max_redirects: int = 5
    max_retry_after: float = 600.0  # a longer Retry-After fails the package instead of waiting
    staging: Path | None = None  # figures extracted but not yet in a shard; None: <out>/.staging (removed)
    downloads: Path | None = None  # packages being downloaded; None: <out>/.downloads

    def check(self) -> None:
        for name in (
            "shard_size",
            "workers",
            "retries",
            "max_package_bytes",
            "max_member_bytes",
            "max_pixels",
        ):
            if getattr(self, name) < (0 if name == "retries" else 1):
                raise ValueError(f"fetch-images: --{name.replace('_', '-')} must be positive")
        if self.rate <= 0 or self.timeout <= 0 or self.backoff < 0 or self.package_s <= 0:
            raise ValueError("fetch-images: --rate, --timeout and --package-s must be > 0, --backoff >= 0")
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


def url_problem(url: str) -> str:
    """Why ``url`` will not be fetched ('' when it will): only http(s) URLs with a host."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError as e:
        return f"unparseable URL ({e})"
    if parts.scheme not in ("http", "https"):
        return f"scheme {parts.scheme + ':' if parts.scheme else 'missing'} (only http and https are fetched)"
    if not parts.hostname:
        return "no host"
    return ""


# ---------------------------------------------------------------- input
def _refusal(where: str, reason: str, detail: str, rec: Any = None) -> dict:
    rec = rec if isinstance(rec, dict) else {}
    pid, url = rec.get("pair_id"), rec.get("pmc_tar_url")
    return {
        "pair_id": pid if isinstance(pid, str) else None,
        "url": url if isinstance(url, str) else None,
        "where": where,
        "reason": reason,
        "detail": detail,
    }


def url_lines(path: Path) -> Iterator[tuple[str, Any, str]]:
    """``(where, value, error)`` per non-blank line, ``where`` = ``"<file>:<line>"`` counting every line
    (blank ones too); a UTF-8 BOM before the first line is dropped, as every vital reader does."""
    with path.open(encoding="utf-8-sig", errors="replace", newline="") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield f"{path}:{n}", json.loads(line), ""
            except (json.JSONDecodeError, RecursionError) as e:
                yield f"{path}:{n}", None, getattr(e, "msg", type(e).__name__)


def read_url_records(path: Path) -> tuple[list[Figure], list[dict], int]:
    """Unique figures in input order (shard numbers not yet set), the refused lines, and the line count.

    A refused line (not JSON, not an object, a missing or empty field, a URL that is not http(s), a
    repeated pair_id: LLaVA-Med's URL file has some, microsoft/LLaVA-Med#47) is listed with its
    ``file:line`` and a reason, and skipped; the first line of a pair_id wins."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: image-URL file not found")
    seen: dict[str, int] = {}
    first_line: dict[str, str] = {}
    figures: list[Figure] = []
    refused: list[dict] = []
    keys: dict[str, str] = {}
    n = 0
    for where, rec, error in url_lines(path):
        n = int(where.rsplit(":", 1)[1])
        if error:
            refused.append(_refusal(where, "bad_json", f"not valid JSON ({error})"))
            continue
        if not isinstance(rec, dict):
            refused.append(_refusal(where, "not_an_object", f"a JSON {type(rec).__name__}, not an object"))
            continue
        missing = [k for k in _REQUIRED if not isinstance(rec.get(k), str) or not rec.get(k).strip()]
        if missing:
            refused.append(_refusal(where, "missing_field", f"missing or empty {', '.join(missing)}", rec))
            continue
        pid = rec["pair_id"]
        if problem := url_problem(rec["pmc_tar_url"]):
            refused.append(_refusal(where, "bad_url", f"{rec['pmc_tar_url'][:200]!r}: {problem}", rec))
            continue
        if pid in seen:
            same = figures[seen[pid]]
            differs = (same.url, same.member) != (rec["pmc_tar_url"], rec["image_file_path"])
            detail = f"repeats {first_line[pid]}" + (" with a different figure" if differs else "")
            refused.append(_refusal(where, "duplicate_pair_id", detail, rec))
            continue
        key = sample_key(pid)
        if key in keys:
            detail = f"pair_id {pid[:200]!r} and {keys[key][:200]!r} map to the same key {key!r}"
            refused.append(_refusal(where, "key_collision", detail, rec))
            continue
        keys[key] = pid
        seen[pid], first_line[pid] = len(figures), where.rsplit("/", 1)[-1]
        figures.append(Figure(pid, rec["pmc_tar_url"], rec["image_file_path"], key, -1))
    return figures, refused, n


# ---------------------------------------------------------------- http
class HostRateLimiter:
    """At most ``rate`` request starts per second to each host, across all threads; ``hold`` keeps a host
    closed until a time (a server's Retry-After)."""

    def __init__(self, rate: float):
        self.interval = 1.0 / rate
        self._lock = threading.Lock()
        self._next: dict[str, float] = {}

    def wait(self, url: str, deadline: float | None = None) -> None:
        host = urllib.parse.urlsplit(url).netloc
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next.get(host, now))
            if deadline is not None and slot > deadline:
                raise Permanent("package_timeout", f"{host} is rate-limited past the package's deadline")
            self._next[host] = slot + self.interval
        if slot > now:
            time.sleep(slot - now)

    def hold(self, url: str, seconds: float) -> None:
        host = urllib.parse.urlsplit(url).netloc
        with self._lock:
            self._next[host] = max(self._next.get(host, 0.0), time.monotonic() + seconds)


_REDIRECTS = (301, 302, 303, 307, 308)


def _opener() -> urllib.request.OpenerDirector:
    """http(s) only (no file:, data:, ftp: handlers) and no automatic redirects: a 3xx comes back as an
    HTTPError that :func:`_get_once` follows by hand, checking the scheme and rate-limiting each hop."""
    opener = urllib.request.OpenerDirector()
    for handler in (
        urllib.request.HTTPHandler(),
        urllib.request.HTTPSHandler(),
        urllib.request.HTTPDefaultErrorHandler(),
        urllib.request.HTTPErrorProcessor(),
    ):
        opener.add_handler(handler)
    return opener


_OPENER = _opener()


def retry_after_s(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return max(0.0, when.timestamp() - time.time())


def download(
    url: str, dest: Path, opts: FetchOptions, limiter: HostRateLimiter, deadline: float | None = None
) -> int:
    """GET ``url`` into ``dest`` with retries; returns the number of attempts. Raises Permanent."""
    deadline = time.monotonic() + opts.package_s if deadline is None else deadline
    last = ""
    for attempt in range(opts.retries + 1):
        if attempt:
            delay = opts.backoff * 2 ** (attempt - 1) * (0.5 + random.random())
            if time.monotonic() + delay > deadline:
                raise Permanent(
                    "package_timeout", f"no complete download in {opts.package_s:g} s; last: {last}"
                )
            time.sleep(delay)
        try:
            _get_once(url, dest, opts, limiter, deadline)
            return attempt + 1
        except _Transient as e:
            last = str(e)
    raise Permanent("retries_exhausted", f"{opts.retries + 1} attempts, last: {last}")


def _get_once(url: str, dest: Path, opts: FetchOptions, limiter: HostRateLimiter, deadline: float) -> None:
    current, hops = url, 0
    while True:
        limiter.wait(current, deadline)
        left = deadline - time.monotonic()
        if left <= 0:
            raise Permanent("package_timeout", f"not complete after {opts.package_s:g} s")
        req = urllib.request.Request(current, headers={"User-Agent": opts.user_agent})
        try:
            with _OPENER.open(req, timeout=min(opts.timeout, left)) as resp:
                _stream(resp, dest, opts, deadline)
                return
        except urllib.error.HTTPError as e:
            if e.code in _REDIRECTS:
                location = e.headers.get("Location")
                e.close()
                target = urllib.parse.urljoin(current, location) if location else ""
                problem = url_problem(target) if target else "no Location header"
                if problem:
                    raise Permanent("bad_redirect", f"{current} -> {target[:200]!r}: {problem}") from None
                hops += 1
                if hops > opts.max_redirects:
                    raise Permanent(
                        "too_many_redirects", f"more than {opts.max_redirects} from {url}"
                    ) from None
                current = target
                continue
            if e.code >= 500 or e.code in (408, 429):
                wait = retry_after_s(e.headers.get("Retry-After"))
                e.close()
                if wait is not None:
                    if wait > opts.max_retry_after:
                        raise Permanent(
                            "rate_limited", f"HTTP {e.code} with Retry-After {wait:g} s (max_retry_after)"
                        ) from None
                    limiter.hold(current, wait)  # every thread waits for this host, not only this one
                raise _Transient(f"HTTP {e.code}" + (f" Retry-After {wait:g} s" if wait else "")) from None
            e.close()
            reason = {404: "not_found", 410: "withdrawn"}.get(e.code, f"http_{e.code}")
            raise Permanent(reason, f"HTTP {e.code} {e.reason}") from None
        except urllib.error.URLError as e:
            if isinstance(e.reason, str):  # "unknown url type" and the like
                raise Permanent("bad_url", f"{current[:200]}: {e.reason}") from None
            raise _Transient(f"{type(e.reason).__name__}: {e.reason}") from None
        except (ConnectionError, TimeoutError, http.client.HTTPException, OSError) as e:
            raise _Transient(f"{type(e).__name__}: {e}") from None


_GZIP_MAGIC = b"\x1f\x8b"


def _stream(resp, dest: Path, opts: FetchOptions, deadline: float) -> None:
    """The body into ``dest`` in chunks, bounded by ``max_package_bytes`` and the deadline; a body that
    is not gzip (an HTML page served with 200) is refused at its first bytes."""
    cap = opts.max_package_bytes
    expected = resp.headers.get("Content-Length")
    if expected is not None and expected.isdigit() and int(expected) > cap:
        raise Permanent("package_too_large", f"Content-Length {expected} > max_package_bytes {cap}")
    got, head = 0, b""
    with dest.open("wb") as f:
        while True:
            if time.monotonic() > deadline:
                raise Permanent("package_timeout", f"{got} bytes after {opts.package_s:g} s (package_s)")
            chunk = resp.read1(1 << 16)
            if not chunk:
                break
            if len(head) < 2:
                head = (head + chunk)[:2]
                if len(head) == 2 and head != _GZIP_MAGIC:
                    kind = resp.headers.get("Content-Type") or "no Content-Type"
                    raise Permanent("not_a_package", f"served {kind}, starting {chunk[:24]!r}, not gzip")
            got += len(chunk)
            if got > cap:
                raise Permanent("package_too_large", f"body passed max_package_bytes {cap} while streaming")
            f.write(chunk)
    if expected is not None and expected.isdigit() and got != int(expected):
        raise _Transient(f"short body: {got} of {expected} bytes")
    if got < 2:
        raise Permanent("not_a_package", f"{got}-byte body")


# ---------------------------------------------------------------- extract
def _image_file(path: Path, member: str, opts: FetchOptions) -> tuple[bytes | None, str, int, int]:
    """Decoded once to prove it is a whole image, after its header's size passed ``max_pixels``; returns
    (new bytes, or None to keep the file as served, ext, width, height)."""
    try:
        with Image.open(path) as im:
            fmt, w, h = im.format, im.width, im.height
            if w * h > opts.max_pixels:
                raise Permanent("too_many_pixels", f"{member}: {w}x{h} pixels > max_pixels {opts.max_pixels}")
            im.load()
            if fmt in ("JPEG", "PNG") and (opts.max_side is None or max(w, h) <= opts.max_side):
                return None, "jpg" if fmt == "JPEG" else "png", w, h
            if opts.max_side is not None and max(w, h) > opts.max_side:
                s = opts.max_side / max(w, h)
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
    except Image.DecompressionBombError as e:
        raise Permanent("too_many_pixels", f"{member}: {e} (max_pixels {opts.max_pixels})") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise Permanent("bad_image", f"{member}: {type(e).__name__}: {e}") from None


def _member_problem(m: tarfile.TarInfo, name: str, opts: FetchOptions) -> Permanent | None:
    if m.issym() or m.islnk():
        kind = "symbolic" if m.issym() else "hard"
        return Permanent(
            "member_is_link", f"{name} is a {kind} link to {m.linkname!r} (links are not followed)"
        )
    if not m.isfile():
        return Permanent("member_not_a_file", f"{name} is not a regular file (tar type {m.type!r})")
    if m.size > opts.max_member_bytes:
        return Permanent(
            "member_too_large", f"{name}: {m.size} bytes > max_member_bytes {opts.max_member_bytes}"
        )
    return None


def extract(
    package: Path,
    wanted: dict[str, list[Figure]],
    opts: FetchOptions,
    staging: Path,
    deadline: float | None = None,
) -> dict:
    """Stream through the package once; stage each wanted member. Returns pair_id -> Permanent for the
    figures that failed (missing, link or oversized member, bad image, truncated archive, deadline)."""
    deadline = time.monotonic() + opts.package_s if deadline is None else deadline
    failed: dict[str, Permanent] = {}
    left = dict(wanted)
    try:
        with tarfile.open(package, "r|gz") as tf:
            for m in tf:
                if time.monotonic() > deadline:
                    raise Permanent("package_timeout", f"extraction not done after {opts.package_s:g} s")
                name = m.name[2:] if m.name.startswith("./") else m.name
                if name not in left:
                    continue
                figs = left[name]  # popped once handled: a read error on it fails it with the rest
                problem = _member_problem(m, name, opts)
                if problem is None:
                    try:
                        _stage_member(tf, m, figs, opts, staging, deadline)
                    except Permanent as e:
                        problem = e
                if problem is not None:
                    failed.update((f.pair_id, problem) for f in figs)
                del left[name]
                if not left:
                    break
    except Permanent as e:
        failed.update((f.pair_id, e) for figs in left.values() for f in figs)
        return failed
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        for figs in left.values():
            for fig in figs:
                failed[fig.pair_id] = Permanent("truncated_archive", f"{type(e).__name__}: {e}")
        return failed
    for member, figs in left.items():
        for fig in figs:
            failed[fig.pair_id] = Permanent("member_missing", f"{member} not in the package")
    return failed


def _stage_member(
    tf: tarfile.TarFile,
    m: tarfile.TarInfo,
    figs: list[Figure],
    opts: FetchOptions,
    staging: Path,
    deadline: float,
) -> None:
    """Copy the member to a file in chunks (never whole in memory), check it is an image, stage it for
    every figure that names it."""
    fd, raw_name = tempfile.mkstemp(dir=staging, prefix=".member.", suffix=".part")
    raw = Path(raw_name)
    try:
        src = tf.extractfile(m)
        with os.fdopen(fd, "wb") as f:
            got = 0
            while chunk := src.read(1 << 20):
                got += len(chunk)
                if got > opts.max_member_bytes:  # a header that lied about the size
                    raise Permanent(
                        "member_too_large", f"{m.name}: over max_member_bytes {opts.max_member_bytes}"
                    )
                if time.monotonic() > deadline:
                    raise Permanent("package_timeout", f"extraction not done after {opts.package_s:g} s")
                f.write(chunk)
        body, ext, w, h = _image_file(raw, m.name, opts)
        for fig in figs:
            meta = {"ext": ext, "width": w, "height": h, "src": _src(fig, opts)}
            tmp = staging / f".{fig.key}.tmp"
            with tmp.open("wb") as out:
                out.write(json.dumps(meta).encode() + b"\n")
                if body is not None:
                    out.write(body)
                else:
                    with raw.open("rb") as f:
                        shutil.copyfileobj(f, out, 1 << 20)
            os.replace(tmp, staging / fig.key)  # present = complete
    finally:
        raw.unlink(missing_ok=True)


def _src(fig: Figure, opts: FetchOptions) -> str:
    """What a staged figure was made from: a staged file from other input or settings is not reused."""
    return f"{fig.url}#{fig.member}" + (f"@{opts.max_side}" if opts.max_side else "")


def _staged(staging: Path, key: str) -> tuple[bytes, dict] | None:
    p = staging / key
    if not p.is_file():
        return None
    raw = p.read_bytes()
    head, _, body = raw.partition(b"\n")
    try:
        return body, json.loads(head)
    except json.JSONDecodeError:
        return None


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


def write_shard(
    out: Path,
    i: int,
    figs: list[Figure],
    staging: Path,
    failed: dict[str, Permanent],
    keep_staged: bool = False,
) -> dict:
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
    if not keep_staged:
        for fig in figs:
            (staging / fig.key).unlink(missing_ok=True)
    return manifest


def write_index(out: Path, manifests: list[dict], prefix: str | None = None) -> int:
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
                    "ref": make_ref(f"{prefix or out.name}/{m['shard']}", r["member"]),
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
    os.chmod(tmp, FILE_MODE)
    os.replace(tmp, out / INDEX)
    return len(rows)


# ---------------------------------------------------------------- run
@dataclass
class _State:
    figures: list[Figure]
    shards: list[list[Figure]]
    staging: Path
    keep_staged: bool = False
    failed: dict[str, Permanent] = field(default_factory=dict)
    resolved: set[str] = field(default_factory=set)
    manifests: dict[int, dict] = field(default_factory=dict)


_LEFTOVER = re.compile(
    r"^\.(shard-\d+\.(tar|json)|index\.parquet|report\.jsonl|summary\.json|fetch\.json)\..+"
)


def remove_leftovers(out: Path) -> int:
    """Temporary files a killed run left beside the outputs (``.shard-00000.tar.*.part``,
    ``.index.parquet.*``, ...): never complete, so never worth keeping or tracking."""
    n = 0
    for p in out.iterdir() if out.is_dir() else ():
        if _LEFTOVER.match(p.name) and p.is_file():
            p.unlink(missing_ok=True)
            n += 1
    return n


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
    remove_leftovers(out)
    settings = {"shard_size": opts.shard_size, "max_side": opts.max_side}
    if (out / SETTINGS).is_file() and (old := read_json(out / SETTINGS)) != settings:
        raise ValueError(
            f"fetch-images: {out} was written with --shard-size {old.get('shard_size')} --max-side "
            f"{old.get('max_side')}; rerun with those, or use another --out"
        )
    write_json(out / SETTINGS, settings)
    staging = opts.staging or out / STAGING
    downloads = opts.downloads or out / DOWNLOADS
    staging.mkdir(parents=True, exist_ok=True)
    for part in [*staging.glob(".member.*.part"), *staging.glob(".*.tmp")]:  # a killed run's, never complete
        part.unlink(missing_ok=True)
    st = _State(figures, shards, staging, keep_staged=opts.staging is not None)
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
    n_index = write_index(out, manifests, prefix)
    report = [*refused, *(f for m in manifests for f in m["failures"])]
    write_jsonl(out / REPORT, report)
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
    write_json(out / SUMMARY, summary)
    remove_leftovers(out)
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
            st.manifests[i] = write_shard(out, i, st.shards[i], st.staging, st.failed, st.keep_staged)
            pending.discard(i)


# ---------------------------------------------------------------- the fetch stage
def stage_options(fp) -> FetchOptions:
    """FetchOptions from the ``fetch`` params section, staging and downloads in its ``cache_dir``."""
    cache = Path(fp.cache_dir)
    return FetchOptions(
        shard_size=fp.shard_size,
        workers=fp.workers,
        rate=fp.rate,
        retries=fp.retries,
        backoff=fp.backoff,
        timeout=fp.timeout,
        max_side=fp.max_side,
        max_package_bytes=int(fp.max_package_mb * 2**20),
        max_member_bytes=int(fp.max_member_mb * 2**20),
        max_pixels=fp.max_pixels,
        package_s=fp.package_s,
        staging=cache / "figures",
        downloads=cache / "downloads",
    )


def run_stage(p, paths) -> dict:
    """The fetch stage: the sampled figures into ``artifacts/figures`` (shards, ``index.parquet``,
    ``report.jsonl``, ``summary.json``) and ``metrics/fetch.json``. With ``fetch.enabled`` off (the demo,
    whose images are local files) it reads nothing and writes an empty index."""
    start = time.perf_counter()
    out, fp = paths.fetched, p.fetch
    if not fp.enabled:
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        write_index(out, [])
        summary = {
            "enabled": False,
            "figures": 0,
            "fetched": 0,
            "note": "fetch.enabled is off: images are local",
        }
        write_json(out / SUMMARY, summary)
        write_json(paths.metric("fetch"), {**summary, "wall_s": round(time.perf_counter() - start, 3)})
        print(f"fetch: off (fetch.enabled: false); figures are read from {paths.corpus}")
        return summary
    opts = stage_options(fp)
    opts.check()
    cache = Path(fp.cache_dir)
    if cache.exists() and not cache.is_dir():
        raise NotADirectoryError(f"fetch.cache_dir {fp.cache_dir}: exists and is not a folder")
    if not paths.sample.is_file():
        raise FileNotFoundError(f"{paths.sample}: not found (run the sample stage first: dvc repro sample)")
    figures, refused, lines = read_url_records(paths.sample)
    summary = fetch_figures(figures, refused, lines, out, opts, ref_prefix=out.name)
    metrics = {"enabled": True, **summary, "wall_s": round(time.perf_counter() - start, 3)}
    write_json(paths.metric("fetch"), metrics)
    print(
        f"fetch: {summary['fetched']} of {lines} sampled figures into {summary['shards']} shards -> {out} "
        f"({summary['this_run']['packages_downloaded']} packages downloaded; not fetched: "
        f"{summary['by_reason'] or 'none'}, listed in {out / REPORT})"
    )
    total = summary["figures"] + summary["lines_refused"]
    failed = total - summary["fetched"]
    if total and (failed == total or failed / total > fp.max_failed_share):
        raise StageFailed(
            f"fetch: {failed} of {total} sampled figures not fetched ({failed / total:.0%}; "
            f"fetch.max_failed_share {fp.max_failed_share:g}): {summary['by_reason']}; each is listed with "
            f"its reason in {out / REPORT}; what was fetched is kept in {fp.cache_dir}"
        )
    return metrics


def stage_reads(p, root: Path) -> list[str]:
    """The fetch stage reads the sample only when it fetches (the demo's no-op reads nothing)."""
    return ["artifacts/sample.jsonl"] if p.fetch.enabled else []
