"""Figures as WebDataset-style tar shards, and one way to open an image wherever it lives.

A shard is a plain (uncompressed) tar whose samples are ``<key>.<jpg|png>`` + ``<key>.json``, in order,
as WebDataset and BIOMEDICA write them. A figure inside a shard is referenced as
``path/to/shard-00012.tar#<key>.jpg``; everything that opens a figure goes through :func:`open_image`,
which takes that form or a plain file path, so records can point at either.

Tar headers are written with fixed owner, mode and mtime: the same figures give the same shard bytes,
so DVC sees an unchanged output and a resumed fetch equals an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

from PIL import Image

_REF = re.compile(r"^(?P<shard>.+\.tar)#(?P<member>[^#]+)$")
_KEY_OK = re.compile(r"[^A-Za-z0-9_-]")
_CACHE_SHARDS = 64  # member tables kept (a few thousand entries each)
_KEY_MAX = 100  # characters of a pair_id kept in a key: file names (key + suffixes) stay under 255 bytes


class ShardError(OSError):
    """A shard reference that cannot be resolved; the message names the shard and member."""


class ShardMissing(ShardError, FileNotFoundError):
    """The shard, or the member in it, does not exist."""


def split_ref(ref: str | os.PathLike) -> tuple[str, str | None]:
    """``("a/b.tar", "k.jpg")`` for a shard reference, ``("a/b.png", None)`` for a plain path."""
    s = os.fspath(ref)
    m = _REF.match(s)
    return (m["shard"], m["member"]) if m else (s, None)


def make_ref(shard: str | os.PathLike, member: str) -> str:
    return f"{Path(shard).as_posix()}#{member}"


def sample_key(pair_id: str) -> str:
    """A WebDataset key for ``pair_id``: no dots (WebDataset splits the extension at the first dot) and no
    path characters, at most ``_KEY_MAX`` characters of the id; a pair_id that had to be changed gets a short
    digest so two ids never collide."""
    key = _KEY_OK.sub("_", pair_id)
    if key != pair_id or not key or len(key) > _KEY_MAX:
        key = f"{key[:_KEY_MAX]}_{hashlib.sha256(pair_id.encode()).hexdigest()[:8]}"
    return key


# ---------------------------------------------------------------- reading
_members_lock = threading.Lock()
_members_cache: OrderedDict[tuple[str, int, int], dict[str, tuple[int, int]]] = OrderedDict()


def shard_members(shard: str | os.PathLike) -> dict[str, tuple[int, int]]:
    """``member -> (data offset, size)`` of a shard, read from its headers once and cached (by path, size
    and mtime, so a rewritten shard is read again)."""
    path = os.path.abspath(shard)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ShardMissing(f"shard not found: {shard}") from None
    key = (path, st.st_size, st.st_mtime_ns)
    with _members_lock:
        if key in _members_cache:
            _members_cache.move_to_end(key)
            return _members_cache[key]
    try:
        with tarfile.open(path, "r:") as tf:
            table = {m.name: (m.offset_data, m.size) for m in tf if m.isfile()}
    except (tarfile.TarError, EOFError) as e:
        raise ShardError(f"shard unreadable: {shard} ({e})") from None
    with _members_lock:
        _members_cache[key] = table
        while len(_members_cache) > _CACHE_SHARDS:
            _members_cache.popitem(last=False)
    return table


def read_bytes(ref: str | os.PathLike, root: str | os.PathLike | None = None) -> bytes:
    """The raw bytes of a figure: a plain file, or one member of a shard (a seek and a read)."""
    path, member = split_ref(ref)
    full = Path(root) / path if root is not None else Path(path)
    if member is None:
        return full.read_bytes()
    table = shard_members(full)
    if member not in table:
        raise ShardMissing(f"{full}: no member {member!r}")
    offset, size = table[member]
    with open(full, "rb") as f:
        f.seek(offset)
        data = f.read(size)
    if len(data) != size:
        raise ShardError(f"{full}: member {member!r} truncated ({len(data)} of {size} bytes)")
    return data


def open_image(ref: str | os.PathLike, root: str | os.PathLike | None = None) -> Image.Image:
    """``PIL.Image.open`` for a plain path or a ``shard.tar#member`` reference (relative to ``root`` if
    given). Use as ``with open_image(ref) as im:``, like ``Image.open``."""
    path, member = split_ref(ref)
    if member is None:
        return Image.open(Path(root) / path if root is not None else Path(path))
    return Image.open(io.BytesIO(read_bytes(ref, root)))


def image_exists(ref: str | os.PathLike, root: str | os.PathLike | None = None) -> bool:
    """Whether a plain file exists, or a shard exists and holds the member."""
    path, member = split_ref(ref)
    full = Path(root) / path if root is not None else Path(path)
    if member is None:
        return full.is_file()
    try:
        return member in shard_members(full)
    except ShardError:
        return False


# ---------------------------------------------------------------- writing
def _info(name: str, size: int) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mtime, ti.mode, ti.uid, ti.gid, ti.uname, ti.gname = size, 0, 0o644, 0, 0, "", ""
    return ti


class ShardWriter:
    """Writes one shard to a temporary file beside it; ``commit`` renames it into place, so a killed
    writer never leaves a half shard under the final name. Returns the entries for the index."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, self._tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".part")
        self._f = os.fdopen(fd, "wb")
        self._tar = tarfile.open(fileobj=self._f, mode="w:", format=tarfile.GNU_FORMAT)  # noqa: SIM115
        self.entries: list[dict[str, Any]] = []

    def add(self, key: str, ext: str, data: bytes, meta: dict[str, Any]) -> dict[str, Any]:
        member = f"{key}.{ext}"
        self._tar.addfile(_info(member, len(data)), io.BytesIO(data))
        blocks = -(-len(data) // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
        offset = self._tar.offset - blocks  # where the data starts (after any long-name header)
        body = json.dumps(meta, sort_keys=True, ensure_ascii=False).encode()
        self._tar.addfile(_info(f"{key}.json", len(body)), io.BytesIO(body))
        entry = {
            "member": member,
            "offset": offset,
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
        self.entries.append(entry)
        return entry

    def commit(self) -> str:
        """Close, fsync and rename into place; returns the shard's sha256."""
        self._tar.close()
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        digest = file_sha256(self._tmp)
        os.chmod(self._tmp, 0o666 & ~_umask())
        os.replace(self._tmp, self.path)
        return digest

    def abort(self) -> None:
        self._tar.close()
        self._f.close()
        Path(self._tmp).unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_index(path: str | os.PathLike) -> dict[str, str]:
    """``pair_id -> ref`` from a fetch index (Parquet), refs relative to the index's folder's parent
    (the corpus root when shards live in ``data/corpus/shards``)."""
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=["pair_id", "ref"])
    return dict(zip(table.column("pair_id").to_pylist(), table.column("ref").to_pylist(), strict=True))


def index_refs(index: str | os.PathLike, root: str | os.PathLike) -> dict[str, str]:
    """``pair_id -> ref`` from a fetch index, the refs made relative to ``root`` (the corpus folder every
    stage opens figures from), e.g. ``../../artifacts/figures/shard-00000.tar#<key>.jpg``."""
    index = Path(index)
    if not index.is_file():
        raise ShardMissing(f"{index}: fetch index not found (run the fetch stage: dvc repro fetch)")
    try:
        refs = read_index(index)
    except Exception as e:  # pyarrow's errors: not Parquet, no pair_id/ref columns
        raise ShardError(f"{index}: not a fetch index ({type(e).__name__}: {e})") from None
    base = os.path.relpath(index.resolve().parent.parent, Path(root).resolve())
    if base == ".":
        return refs
    return {pid: f"{Path(base).as_posix()}/{ref}" for pid, ref in refs.items()}
