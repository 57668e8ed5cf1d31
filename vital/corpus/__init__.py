"""Readers for the corpora the field publishes, streamed, each registered under a ``sample.corpus.format`` name.

A reader turns one file (or a Parquet dataset folder) into ``(where, record)`` pairs one at a time:
``where`` is ``file:line`` (``file:row N`` for Parquet) and ``record`` a dict in vital's figure-record
shape (:class:`vital.schema.FigureRecord`: ``pair_id``, ``fig_caption``, ``fig_label``,
``in_text_mention``, ``domain`` flags, ``image`` a path relative to the corpus folder, optional
``pmid``; other fields pass through), or a :class:`Malformed` naming what is wrong with that line. A
reader never holds more than one record (or one Parquet batch) in memory; which records are usable,
and which of two records with one ``pair_id`` wins (the first), is the caller's rule
(:mod:`vital.sample`).

``image`` stays a path string (``images/<pair_id>.jpg`` when a format has none, where LLaVA-Med's
``download_images.py`` puts it), so a later resolver can map it into image shards.

Formats (``READERS``):

- ``vital``: vital's own figure JSONL (the demo corpus), records passed through unchanged.
- ``llava_med_fig_captions``: LLaVA-Med's figure-caption records (``pair_id``, ``pmid``, ``fig_caption``,
  ``fig_label``, ``in_text_mention`` as a string, a list of strings or of ``{tokens, entities}``,
  ``domain`` flags), as its JSON object keyed by domain (``llava_med_instruct_fig_captions.json``),
  a JSON list, or JSONL.
- ``pmc_index``: a PMC-15M-style index, JSONL or Parquet (a file or a folder of files): ``pair_id``,
  ``fig_caption`` (or ``caption``), ``image`` (or ``image_file_path``), ``domain`` as flags or as one
  domain name, optional ``pmid``, ``fig_label``, ``in_text_mention``.
- ``llava_med_image_urls`` (kind ``image_urls``): LLaVA-Med's ``llava_med_image_urls.jsonl``
  (``pair_id``, ``pmc_tar_url``, ``image_file_path``), joined onto sampled records by ``pair_id``.
- ``llava_conversations`` (kind ``instructions``): LLaVA conversation JSON (a list, or JSONL) as
  instruction data, e.g. LLaVA-Med's 10K/60K sets for ``curate.mix``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from vital.corpus.jsonstream import iter_json_records
from vital.io import RecordError, json_lines
from vital.schema import DOMAINS

Kind = Literal["figures", "image_urls", "instructions"]


@dataclass(frozen=True)
class Malformed:
    """A line or row that is not a record (bad JSON, not an object): skipped, counted and listed."""

    reason: str
    detail: str = ""


Item = tuple[str, "dict[str, Any] | Malformed"]


@dataclass(frozen=True)
class Reader:
    kind: Kind
    read: Callable[..., Iterator[Item]]
    """``read(path, images="images")`` -> (where, record or Malformed) pairs."""
    pair_ids: Callable[[Path], Iterator[str | None]] | None = None
    """Optional fast path: every record's pair_id in order, without reading the other fields (Parquet)."""


READERS: dict[str, Reader] = {}


def register(name: str, reader: Reader) -> None:
    if name in READERS:
        raise ValueError(f"corpus format {name!r} is already registered")
    READERS[name] = reader


def reader(name: str, kind: Kind = "figures") -> Reader:
    r = READERS.get(name)
    if r is None or r.kind != kind:
        known = sorted(n for n, x in READERS.items() if x.kind == kind)
        raise ValueError(f"unknown {kind} format {name!r} (known: {', '.join(known)})")
    return r


def formats(kind: Kind) -> set[str]:
    return {n for n, r in READERS.items() if r.kind == kind}


# ------------------------------------------------------------------ line sources
def jsonl_lines(path: Path) -> Iterator[Item]:
    """(file:line, dict) per non-blank line; a line that is not a JSON object is a Malformed."""
    for where, raw, error in json_lines(path):
        if error:
            yield where, Malformed("invalid_json", error)
        elif not isinstance(raw, dict):
            yield where, Malformed("invalid_record", f"expected a JSON object, got {type(raw).__name__}")
        else:
            yield where, raw


def json_records(path: Path) -> Iterator[tuple[str, str | None, dict[str, Any] | Malformed]]:
    """(``file:line [index]``, key, dict) per element of a JSON list or an object of lists (streamed)."""
    for i, (line, key, raw) in enumerate(iter_json_records(path)):
        where = f"{path}:{line} [{i}]"  # the record's index too: a JSON list is often one line
        if not isinstance(raw, dict):
            yield where, key, Malformed("invalid_record", f"expected a JSON object, got {type(raw).__name__}")
        else:
            yield where, key, raw


def _first_char(path: Path) -> str:
    with path.open(encoding="utf-8-sig") as f:  # a leading byte order mark is stripped (vital.io.BOM)
        while True:
            try:
                ch = f.read(1)
            except UnicodeDecodeError as e:
                raise RecordError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
            if ch == "" or not ch.isspace():
                return ch


def _is_jsonl(path: Path) -> bool:
    """JSONL by suffix; a .json file that starts with '{' on a line that parses alone is JSONL too."""
    if path.suffix == ".jsonl":
        return True
    if _first_char(path) != "{":
        return False
    with path.open(encoding="utf-8-sig") as f:
        first = f.readline()
    try:
        json.loads(first)
    except json.JSONDecodeError:
        return False
    return True


# ------------------------------------------------------------------ record helpers
def mentions(value: Any) -> list[str]:
    """``in_text_mention`` as LLaVA-Med writes it (a string, strings, ``{tokens, entities}``) -> strings."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value.strip() else []
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        return [str(value)]
    return [str(m.get("tokens", "")) if isinstance(m, dict) else str(m) for m in value]


def domain_flags(value: Any, fallback: str | None = None) -> dict[str, bool]:
    """Domain flags from flags, one domain name, or (when absent) the enclosing key of the file."""
    if isinstance(value, dict):
        return {str(k): bool(v) for k, v in value.items()}
    name = value if isinstance(value, str) and value else fallback
    if name is None:
        return {}
    return {d: d == name for d in DOMAINS} if name in DOMAINS else {str(name): True}


def _figure(raw: dict[str, Any], images: str, key: str | None = None) -> dict[str, Any]:
    out = dict(raw)
    if "fig_caption" not in out and "caption" in out:
        out["fig_caption"] = out.pop("caption")
    out["in_text_mention"] = mentions(out.get("in_text_mention"))
    out["domain"] = domain_flags(out.get("domain"), key)
    if out.get("pmid") is not None:
        out["pmid"] = str(out["pmid"])
    pair_id = out.get("pair_id")
    if not out.get("image") and isinstance(pair_id, str):
        # LLaVA-Med's download_images.py saves <images>/<pair_id>.jpg
        out["image"] = f"{images}/{pair_id}.jpg"
    return out


# ------------------------------------------------------------------ formats
def _read_vital(path: Path, images: str = "images") -> Iterator[Item]:
    yield from jsonl_lines(path)


register("vital", Reader("figures", _read_vital))


def _read_llava_med_fig_captions(path: Path, images: str = "images") -> Iterator[Item]:
    if _is_jsonl(path):
        for where, raw in jsonl_lines(path):
            yield where, raw if isinstance(raw, Malformed) else _figure(raw, images)
        return
    for where, key, raw in json_records(path):
        yield where, raw if isinstance(raw, Malformed) else _figure(raw, images, key)


register("llava_med_fig_captions", Reader("figures", _read_llava_med_fig_captions))

PARQUET_BATCH = 8192


def parquet_rows(path: Path, columns: list[str] | None = None) -> Iterator[Item]:
    """(file:row N, dict) per row of a Parquet file or folder, one record batch in memory at a time."""
    import pyarrow.dataset as ds

    dataset = ds.dataset(str(path), format="parquet")
    names = set(dataset.schema.names)
    cols = [c for c in columns if c in names] if columns else None
    for fragment in dataset.get_fragments():
        row = 0
        for batch in fragment.to_batches(columns=cols, batch_size=PARQUET_BATCH):
            for rec in batch.to_pylist():
                yield f"{fragment.path}:row {row}", rec
                row += 1


def _is_parquet(path: Path) -> bool:
    return path.is_dir() or path.suffix in (".parquet", ".pq")


def _read_pmc_index(path: Path, images: str = "images") -> Iterator[Item]:
    rows = parquet_rows(path) if _is_parquet(path) else jsonl_lines(path)
    for where, raw in rows:
        if isinstance(raw, Malformed):
            yield where, raw
            continue
        if "image" not in raw and raw.get("image_file_path"):
            raw = {**raw, "image": raw["image_file_path"]}
        yield where, _figure({k: v for k, v in raw.items() if v is not None}, images)


def _pmc_index_pair_ids(path: Path) -> Iterator[str | None] | None:
    """The pair_id column alone (Parquet only; None for JSONL, whose lines must be parsed anyway)."""
    if not _is_parquet(path):
        return None
    import pyarrow.dataset as ds

    dataset = ds.dataset(str(path), format="parquet")
    if "pair_id" not in dataset.schema.names:
        return None

    def ids() -> Iterator[str | None]:
        for fragment in dataset.get_fragments():
            for batch in fragment.to_batches(columns=["pair_id"], batch_size=65536):
                yield from batch.column(0).to_pylist()

    return ids()


register("pmc_index", Reader("figures", _read_pmc_index, _pmc_index_pair_ids))


def _read_image_urls(path: Path, images: str = "images") -> Iterator[Item]:
    for where, raw in jsonl_lines(path):
        if isinstance(raw, Malformed):
            yield where, raw
            continue
        missing = [
            k for k in ("pair_id", "pmc_tar_url", "image_file_path") if not isinstance(raw.get(k), str)
        ]
        yield where, Malformed("invalid_record", f"missing field {missing}") if missing else raw


register("llava_med_image_urls", Reader("image_urls", _read_image_urls))


def _read_llava_conversations(path: Path, images: str = "images") -> Iterator[Item]:
    if _is_jsonl(path):
        yield from jsonl_lines(path)
        return
    if _first_char(path) != "[":
        raise RecordError(f"{path}: expected a JSON list of LLaVA records (or JSONL)")
    for where, _, raw in json_records(path):
        yield where, raw


register("llava_conversations", Reader("instructions", _read_llava_conversations))
