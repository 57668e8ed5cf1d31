"""A downloaded package streamed through once: the wanted members checked (links, size, pixels) and staged."""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
import tempfile
import time
import zlib
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from vital.fetch.options import FetchOptions, Figure, Permanent


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
