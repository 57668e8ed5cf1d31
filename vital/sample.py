"""The sample stage: a domain-stratified, seeded sample of figure records from the corpus.

The corpus is read by the reader ``sample.corpus.format`` names (:mod:`vital.corpus`: vital's JSONL,
LLaVA-Med's figure-caption records, a PMC-15M-style JSONL or Parquet index), one record at a time.
A bad record is skipped, counted by reason and listed with its ``file:line`` in ``metrics/sample.json``.
Each record's draw is decided by a stable hash of ``(seed, pair_id)``, so the sample is reproducible and
a figure's selection does not change when unrelated records are added or removed; memory stays bounded
by ``per_domain`` records per domain (times ``diversity.pool_factor`` with the diversity step) plus
8 bytes per corpus record (the hash keys used to find repeated ``pair_id``s).

Fetched shards: with ``sample.corpus.shards`` (the ``index.parquet`` of a ``vital fetch-images`` run),
each record's ``image`` is replaced by its figure's shard reference (``shards/shard-00000.tar#<key>.jpg``,
relative to the corpus folder) found by ``pair_id``; a record whose figure is not in the index (its
fetch failed: see the fetch's ``report.jsonl``) is skipped as ``image_not_fetched``. The index is held as a
``pair_id -> ref`` dict.

Repeated ``pair_id``: the first record with a pair_id wins, valid or not; every later one is skipped as
``duplicate_pair_id`` and listed with its line. Duplicates are found after one pass over the hash keys;
only when there are any is the corpus read a second time, skipping them, so the sample and the counts
are exactly those of the corpus without the later copies.
"""

from __future__ import annotations

import hashlib
import heapq
import os
from array import array
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from vital.corpus import Malformed, reader
from vital.diversity import diverse
from vital.drops import Drops
from vital.image_urls import join_image_urls
from vital.io import RecordError, write_json, write_jsonl
from vital.licenses import OaFileList, license_counts, provenance, read_oa_file_list
from vital.params import Params, SampleParams
from vital.paths import Paths
from vital.progress import progress
from vital.schema import DOMAINS, FigureRecord
from vital.shards import image_exists, read_index
from vital.stats import attach, evidence_path

_PLAIN = (str, type(None))


def _plain_shape(raw: dict) -> bool:
    """True when ``raw`` has exactly the types FigureRecord would accept unchanged (the common case),
    so the checks below need no pydantic validation; anything else goes through FigureRecord."""
    dom = raw.get("domain")
    return (
        type(raw.get("pair_id")) is str
        and type(raw.get("fig_caption")) is str
        and type(raw.get("image")) is str
        and type(dom) is dict
        and all(type(v) is bool and type(k) is str for k, v in dom.items())
        and type(raw.get("pmid")) in _PLAIN
        and type(raw.get("pmcid")) in _PLAIN
        and type(raw.get("license")) in _PLAIN
        and type(raw.get("fig_label", "")) is str
        and all(type(m) is str for m in raw.get("in_text_mention") or ())
    )


def _check(raw: dict, root: Path, check_images: bool) -> tuple[str | None, str, str]:
    """(primary domain, reason, detail); reason is '' for a usable record."""
    if _plain_shape(raw):
        pair_id, caption, image, flags = raw["pair_id"], raw["fig_caption"], raw["image"], raw["domain"]
        domain = next((d for d in DOMAINS if flags.get(d)), "other")
    else:
        try:
            rec = FigureRecord.model_validate(raw)
        except ValidationError as e:
            fields = ", ".join(".".join(str(p) for p in err["loc"]) for err in e.errors())
            return None, "invalid_record", f"bad or missing fields: {fields}"
        pair_id, caption, image, flags = rec.pair_id, rec.fig_caption, rec.image, rec.domain
        domain = rec.primary_domain
    if not pair_id.strip():
        return domain, "invalid_record", "empty pair_id"
    if not caption.strip():
        return domain, "empty_caption", ""
    if domain not in DOMAINS:
        return domain, "unknown_domain", f"domain flags {flags} name none of {list(DOMAINS)}"
    if not image.strip():
        return domain, "missing_image", "no image path"
    if check_images and not image.startswith(("http://", "https://")) and not image_exists(image, root):
        return domain, "missing_image", f"{root / image} does not exist"
    return domain, "", ""


def _key_fn(seed: int):
    """stable_seed(seed, "sample", pair_id), with the constant prefix encoded once."""
    prefix = f"{seed}:sample:".encode()

    def key(pair_id: str) -> int:
        digest = hashlib.blake2b(prefix + pair_id.encode("utf-8"), digest_size=8).digest()
        return int.from_bytes(digest, "big") >> 1

    return key


class _Pass:
    """One pass over the corpus: counts, problems, and per domain the records with the smallest keys."""

    def __init__(self, cfg: SampleParams, capacity: int, oa: OaFileList | None = None):
        self.cfg, self.capacity, self.oa = cfg, capacity, oa
        self.problems = Drops()
        self.available: Counter[str] = Counter()
        self.not_selected: Counter[str] = Counter()
        # per domain, a max-heap (negated key) holding the `capacity` smallest hash keys seen so far
        self.heaps: dict[str, list[tuple[int, int, dict]]] = {d: [] for d in cfg.domains}
        self.read = 0
        self.keys = array("Q")  # every pair_id's key, to find repeated pair_ids after the pass

    def collect_keys(self, pair_ids: Iterator[str | None]) -> None:
        key = _key_fn(self.cfg.seed)
        self.keys.extend(key(p) for p in pair_ids if isinstance(p, str) and p)

    def run(
        self,
        items: Iterator,
        root: Path,
        suspects: set[int] | None = None,
        shard_refs: dict[str, str] | None = None,
    ) -> None:
        cfg, key_of = self.cfg, _key_fn(self.cfg.seed)
        first: dict[int, set[str]] = {}
        for ordinal, (where, raw) in enumerate(progress(items, "sample: reading corpus")):
            self.read += 1
            if isinstance(raw, Malformed):
                self.problems.add(raw.reason, where, raw.detail)
                continue
            pid = raw.get("pair_id")
            key = key_of(pid) if isinstance(pid, str) and pid else None
            if key is not None:
                if suspects is None:
                    self.keys.append(key)
                elif key in suspects:
                    ids = first.setdefault(key, set())
                    if pid in ids:
                        self.problems.add(
                            "duplicate_pair_id", where, f"{pid} appears earlier (first wins)", pair_id=pid
                        )
                        continue
                    ids.add(pid)
            if shard_refs is not None and isinstance(pid, str) and pid:
                ref = shard_refs.get(pid)
                if ref is None:
                    self.problems.add(
                        "image_not_fetched",
                        where,
                        f"not in {cfg.corpus.shards} (see report.jsonl beside it)",
                        pair_id=pid,
                    )
                    continue
                raw = {**raw, "image": ref}
            domain, reason, detail = _check(raw, root, cfg.corpus.check_images)
            if reason:
                self.problems.add(reason, where, detail, pair_id=pid if isinstance(pid, str) else None)
                continue
            raw = {**raw, **provenance(raw, self.oa)}
            if not license_allowed(raw, cfg):
                self.problems.add("license_not_allowed", where, f"{raw['license']!r}", pair_id=pid)
                continue
            if domain not in self.heaps:
                self.not_selected[domain] += 1
                continue
            self.available[domain] += 1
            item = (-key, ordinal, raw)
            heap = self.heaps[domain]
            if len(heap) < self.capacity:
                heapq.heappush(heap, item)
            elif item[0] > heap[0][0]:
                heapq.heapreplace(heap, item)

    def repeated_keys(self) -> set[int]:
        keys = np.frombuffer(self.keys, dtype=np.uint64) if len(self.keys) else np.zeros(0, np.uint64)
        keys = np.sort(keys)
        return {int(k) for k in keys[1:][keys[1:] == keys[:-1]]}


def license_allowed(record: dict, cfg: SampleParams) -> bool:
    return cfg.licenses is None or record.get("license") in cfg.licenses


def _relicense(records: list[dict], oa: OaFileList | None, cfg: SampleParams, problems: Drops) -> list[dict]:
    """After the image-URL join a record may name its PMCID (the OA package URL): fill what was missing;
    one whose license is now known and not allowed is dropped (the sample is then that much smaller)."""
    kept = []
    for rec in records:
        if rec.get("pmcid") is None or rec.get("license") == "unknown":
            found = provenance(
                {**rec, "license": None if rec.get("license") == "unknown" else rec["license"]}, oa
            )
            rec.update(found)
            if not license_allowed(rec, cfg):
                problems.add(
                    "license_not_allowed", rec["pair_id"], f"{rec['license']!r}", pair_id=rec["pair_id"]
                )
                continue
        kept.append(rec)
    return kept


def shard_refs(index: Path, root: Path) -> dict[str, str]:
    """``pair_id -> shard ref`` from a fetch's ``index.parquet``, the refs made relative to ``root`` (the
    corpus folder every stage opens images from); the index's refs are relative to its folder's parent."""
    if not index.is_file():
        raise FileNotFoundError(
            f"{index}: fetch index not found (sample.corpus.shards; write it with `vital fetch-images`)"
        )
    try:
        refs = read_index(index)
    except Exception as e:  # pyarrow's errors: not Parquet, no pair_id/ref columns
        raise RecordError(
            f"{index}: not a fetch index (sample.corpus.shards): {e.__class__.__name__}: {e}"
        ) from None
    base = os.path.relpath(index.resolve().parent.parent, root.resolve())
    if base == ".":
        return refs
    return {pid: f"{Path(base).as_posix()}/{ref}" for pid, ref in refs.items()}


def _corpus_path(figures_path: Path, cfg: SampleParams) -> Path:
    return Path(cfg.corpus.path) if cfg.corpus.path else Path(figures_path)


def run(figures_path: Path, out: Path, metrics: Path | None, cfg: SampleParams) -> dict:
    """Draw ``cfg.per_domain`` figures per domain; write the sample (and ``metrics``, if given); return the
    metrics (the stage's record: ``vital.stage`` writes it as the stage's evidence).

    ``figures_path`` is the demo corpus; ``cfg.corpus.path`` replaces it when set. With no usable
    record, the metrics (counts and listed problems with their lines) are still written, then a
    :class:`~vital.io.RecordError` says what was skipped and why.
    """
    path, out = _corpus_path(figures_path, cfg), Path(out)
    if not path.exists():
        hint = "set sample.corpus.path" if cfg.corpus.path is None else "check sample.corpus.path"
        raise FileNotFoundError(
            f"{path}: corpus not found ({hint}, or build the demo world with `vital world`)"
        )
    root = path if path.is_dir() else path.parent
    refs = shard_refs(Path(cfg.corpus.shards), root) if cfg.corpus.shards else None
    oa = read_oa_file_list(cfg.corpus.oa_file_list) if cfg.corpus.oa_file_list else None
    fmt = reader(cfg.corpus.format)
    capacity = cfg.per_domain * (cfg.diversity.pool_factor if cfg.diversity.clusters else 1)
    p = _Pass(cfg, capacity, oa)
    pair_ids = fmt.pair_ids(path) if fmt.pair_ids else None
    if pair_ids is not None:  # the pair_id column first (cheap), then one full pass that knows the repeats
        p.collect_keys(pair_ids)
        repeated = p.repeated_keys()
        p.keys = array("Q")
        p.run(fmt.read(path, images=cfg.corpus.images), root, suspects=repeated, shard_refs=refs)
    else:
        p.run(fmt.read(path, images=cfg.corpus.images), root, shard_refs=refs)
        repeated = p.repeated_keys()
        if repeated:  # read again, skipping every copy after the first
            p = _Pass(cfg, capacity, oa)
            p.run(fmt.read(path, images=cfg.corpus.images), root, suspects=repeated, shard_refs=refs)
    chosen = {}
    for d, heap in p.heaps.items():
        items = [(-k, o, raw) for k, o, raw in heap]
        picked = diverse(items, cfg.per_domain, cfg, root) if cfg.diversity.clusters else items
        chosen[d] = sorted(picked, key=lambda it: it[1])  # corpus order within a domain
    records = [raw for d in cfg.domains for _, _, raw in chosen[d]]
    result: dict[str, Any] = {
        "corpus": {"format": cfg.corpus.format, "path": str(path)}
        | ({"shards": cfg.corpus.shards, "indexed": len(refs)} if refs is not None else {}),
        "read": p.read,
        "sampled": len(records),
        "per_domain": {d: {"available": p.available[d], "sampled": len(chosen[d])} for d in cfg.domains},
        "short_domains": [d for d in cfg.domains if len(chosen[d]) < cfg.per_domain],
        "not_selected_domains": dict(p.not_selected),
    }
    if records and cfg.corpus.image_urls:
        result["image_urls"] = join_image_urls(records, Path(cfg.corpus.image_urls), p.problems)
        records = _relicense(records, oa, cfg, p.problems)
        result["sampled"] = len(records)
    result["by_license"] = license_counts(records)
    result |= p.problems.metrics()
    if metrics is not None:
        write_json(metrics, result)
    if not records:
        shown = "\n  ".join(
            f"{x['where']}: {x['reason']} {x['detail']}".rstrip() for x in p.problems.examples[:5]
        )
        error = RecordError(
            f"{path}: no usable figures for domains {cfg.domains} (format {cfg.corpus.format!r}; read {p.read}, "
            f"skipped {result['dropped_by_reason']}, other domains {dict(p.not_selected)}; all listed in "
            f"{metrics or evidence_path(Path('.'), 'sample')})" + (f"\n  {shown}" if shown else "")
        )
        raise attach(error, result)
    write_jsonl(out, records)
    return result


def run_stage(p: Params, paths: Paths) -> dict:
    result = run(paths.figures, paths.sample, None, p.sample)
    print(f"sample: {result['sampled']} figures, {result['dropped']} records skipped -> {paths.sample}")
    return result


def headline(detail: dict) -> dict:
    return {"sampled": detail.get("sampled")}
