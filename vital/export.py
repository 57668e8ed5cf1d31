"""Release a curated set in the formats its users load: LLaVA(-Med) training JSON and a Hugging Face dataset.

- ``llava``: ``<out>/<name>.json`` (a JSON list of LLaVA conversation records) and the figures as loose
  files under ``<out>/images/``; every record's ``image`` is relative to ``<out>``, so LLaVA-Med's
  loader (``Image.open(os.path.join(image_folder, image))`` with ``image_folder = <out>``) opens it,
  whether the corpus kept the figure as a file or inside a fetched shard (``shards/x.tar#key.png``).
- ``hf``: Parquet shards ``<out>/data/train-NNNNN-of-NNNNN.parquet`` with each figure's bytes embedded
  (the ``datasets`` Image feature: a ``{bytes, path}`` struct plus the schema's ``huggingface`` metadata),
  loadable with ``datasets.load_dataset("parquet", data_dir=<out>)``, and a dataset card ``README.md``
  whose YAML header gives the counts, the selection method and its params, provenance and the records per
  license.

Every figure is read once per export and checked to open as an image; a record whose figure is missing
or unreadable is skipped and counted (``dropped_by_reason``), never written half.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from collections import Counter
from pathlib import Path, PurePosixPath
from typing import Any

import yaml
from PIL import Image

from vital.artifacts.curated import read_curated
from vital.drops import Drops
from vital.failures import StageFailed
from vital.io import RecordError, write_json
from vital.licenses import PROVENANCE_FIELDS, UNKNOWN, license_counts
from vital.params import Params
from vital.paths import Paths, repo_relative
from vital.shards import file_sha256, read_bytes, split_ref

FORMATS = ("llava", "hf")
CITATION = """@inproceedings{cui2024biomedical,
  title     = {Biomedical Visual Instruction Tuning with Clinician Preference Alignment},
  author    = {Cui, Hejie and Mao, Lingjun and Liang, Xin and Zhang, Jieyu and Ren, Hui and Li, Quanzheng
               and Li, Xiang and Yang, Carl},
  booktitle = {Advances in Neural Information Processing Systems (Datasets and Benchmarks Track)},
  year      = {2024}
}
@inproceedings{li2023llavamed,
  title     = {{LLaVA-Med}: Training a Large Language-and-Vision Assistant for Biomedicine in One Day},
  author    = {Li, Chunyuan and Wong, Cliff and Zhang, Sheng and Usuyama, Naoto and Liu, Haotian and Yang,
               Jianwei and Naumann, Tristan and Poon, Hoifung and Gao, Jianfeng},
  booktitle = {Advances in Neural Information Processing Systems (Datasets and Benchmarks Track)},
  year      = {2023}
}"""


def export_name(ref: str) -> str:
    """Where a figure goes under ``images/``: a shard member keeps its member name (its sample key, unique
    per pair_id), a file its path below the corpus' image folder; never absolute, never ``..``."""
    shard, member = split_ref(ref)
    parts = PurePosixPath(member if member is not None else Path(shard).as_posix()).parts
    parts = [p for p in parts if p not in ("", ".", "..", "/") and not p.endswith(":")]
    if parts and parts[0] == "images" and len(parts) > 1:
        parts = parts[1:]
    return "/".join(parts) or hashlib.sha256(ref.encode()).hexdigest()[:16]


def _image_bytes(ref: str, root: Path) -> tuple[bytes | None, str]:
    """(the figure's bytes, '') or (None, why it cannot be used)."""
    if ref.startswith(("http://", "https://")):
        return None, f"{ref}: a URL, not a fetched figure (fetch it first: vital fetch-images)"
    try:
        data = read_bytes(ref, root)
        with Image.open(io.BytesIO(data)) as im:
            im.verify()
    except FileNotFoundError as e:
        return None, str(e)
    except Exception as e:  # PIL's errors for a truncated or non-image file
        return None, f"{ref}: not a readable image ({e.__class__.__name__}: {e})"
    return data, ""


class _Figures:
    """Each figure read once, its export name fixed once (two figures never share a name)."""

    def __init__(self, root: Path, problems: Drops):
        self.root, self.problems = root, problems
        self.names: dict[str, str] = {}  # ref -> export name
        self.taken: dict[str, str] = {}  # export name -> ref
        self.failed: set[str] = set()

    def get(self, rec: dict[str, Any], where: str) -> tuple[str, bytes] | None:
        ref = rec.get("image")
        if not isinstance(ref, str) or not ref.strip():
            self.problems.add("missing_image", where, "no image field")
            return None
        if ref in self.failed:
            self.problems.add("missing_image", where, f"{ref} (see the first record that uses it)")
            return None
        data, why = _image_bytes(ref, self.root)
        if data is None:
            self.failed.add(ref)
            self.problems.add("missing_image", where, why)
            return None
        name = self.names.get(ref)
        if name is None:
            name = export_name(ref)
            if name in self.taken:
                stem, dot, ext = name.rpartition(".")
                digest = hashlib.sha256(ref.encode()).hexdigest()[:8]
                name = f"{stem}_{digest}.{ext}" if dot else f"{name}_{digest}"
            self.names[ref], self.taken[name] = name, ref
        return f"images/{name}", data


def _released(rec: dict[str, Any], image: str) -> dict[str, Any]:
    """The record as released: LLaVA's fields first, its article, then what else curate recorded."""
    out = {"id": str(rec.get("id")), "image": image, "conversations": rec.get("conversations", [])}
    out |= {k: rec.get(k) for k in PROVENANCE_FIELDS}
    out["license"] = out["license"] or UNKNOWN
    out |= {k: v for k, v in rec.items() if k not in out}
    return out


def export_llava(records: list[dict[str, Any]], source: Path, root: Path, out: Path) -> dict[str, Any]:
    """``<out>/<source name>.json`` + ``<out>/images/``: what LLaVA-Med trains on, with images beside it."""
    problems = Drops()
    figures = _Figures(root, problems)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    released, written = [], set()
    for i, rec in enumerate(records):
        got = figures.get(rec, f"{source}[{i}]")
        if got is None:
            continue
        image, data = got
        if image not in written:
            dest = tmp / image
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(data)
            written.add(image)
        released.append(_released(rec, image))
    if not released:
        shutil.rmtree(tmp, ignore_errors=True)
        raise StageFailed(
            f"{source}: no record has a readable figure ({problems.metrics()['dropped_by_reason']})"
        )
    write_json(tmp / source.name, released, indent=None)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    opened = sum(1 for r in released if _opens(out, r["image"]))
    return {
        "format": "llava",
        "records": len(released),
        "images": len(written),
        "opened": opened,
        "by_license": license_counts(released),
        **problems.metrics(),
    }


def _opens(image_folder: Path, image: str) -> bool:
    """LLaVA-Med's loader logic: ``Image.open(os.path.join(image_folder, image)).convert('RGB')``."""
    try:
        with Image.open(os.path.join(image_folder, image)) as im:
            im.convert("RGB")
        return True
    except Exception:
        return False


# ------------------------------------------------------------------ Hugging Face
_STRING = {"dtype": "string", "_type": "Value"}
FEATURES = {
    "id": _STRING,
    "image": {"_type": "Image"},
    # a one-element list: datasets' own spelling of a list feature, read the same by every version
    "conversations": [{"from": _STRING, "value": _STRING}],
    "pmid": _STRING,
    "pmcid": _STRING,
    "license": _STRING,
    "domain": _STRING,
    "pair_id": _STRING,
    "score": {"dtype": "float64", "_type": "Value"},
}


def _schema():
    import pyarrow as pa

    text = pa.string()
    fields = [
        ("id", text),
        ("image", pa.struct([("bytes", pa.binary()), ("path", text)])),
        ("conversations", pa.list_(pa.struct([("from", text), ("value", text)]))),
        ("pmid", text),
        ("pmcid", text),
        ("license", text),
        ("domain", text),
        ("pair_id", text),
        ("score", pa.float64()),
    ]
    meta = {b"huggingface": json.dumps({"info": {"features": FEATURES}}).encode()}
    return pa.schema(fields, metadata=meta)


def _row(rec: dict[str, Any], image: str, data: bytes) -> dict[str, Any]:
    prov = rec.get("provenance") if isinstance(rec.get("provenance"), dict) else {}
    score = rec.get("score")
    return {
        "id": str(rec.get("id")),
        "image": {"bytes": data, "path": image.removeprefix("images/")},
        "conversations": [
            {"from": str(t.get("from")), "value": str(t.get("value"))} for t in rec.get("conversations", [])
        ],
        **{k: (None if rec.get(k) is None else str(rec.get(k))) for k in ("pmid", "pmcid")},
        "license": rec.get("license") or UNKNOWN,
        "domain": rec.get("domain") if isinstance(rec.get("domain"), str) else None,
        "pair_id": prov.get("pair_id"),
        "score": float(score) if isinstance(score, int | float) else None,
    }


def export_hf(
    records: list[dict[str, Any]],
    source: Path,
    root: Path,
    out: Path,
    card: dict[str, Any],
    shard_rows: int = 5000,
) -> dict[str, Any]:
    """Parquet shards with the figures embedded, and the dataset card (``card``: selection, provenance).
    Rows are written a shard at a time: memory holds ``shard_rows`` figures, not the whole set."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    problems = Drops()
    figures = _Figures(root, problems)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "data").mkdir(parents=True)
    schema = _schema()
    licenses: Counter = Counter()
    domains: Counter = Counter()
    buffer: list[dict[str, Any]] = []
    written: list[Path] = []  # a shard's final name needs the count of shards: renamed at the end

    def flush() -> None:
        path = tmp / "data" / f"part-{len(written):05d}.parquet"
        pq.write_table(pa.Table.from_pylist(buffer, schema=schema), path)
        written.append(path)
        buffer.clear()

    n = 0
    for i, rec in enumerate(records):
        got = figures.get(rec, f"{source}[{i}]")
        if got is None:
            continue
        row = _row(rec, *got)
        licenses[row["license"]] += 1
        domains[row["domain"] or "unknown"] += 1
        buffer.append(row)
        n += 1
        if len(buffer) == shard_rows:
            flush()
    if buffer:
        flush()
    if not n:
        shutil.rmtree(tmp, ignore_errors=True)
        raise StageFailed(
            f"{source}: no record has a readable figure ({problems.metrics()['dropped_by_reason']})"
        )
    n_shards = len(written)
    for s, path in enumerate(written):
        path.rename(tmp / "data" / f"train-{s:05d}-of-{n_shards:05d}.parquet")
    result = {
        "format": "hf",
        "records": n,
        "images": len(figures.names),
        "shards": n_shards,
        "by_license": dict(sorted(licenses.items())),
        "by_domain": dict(sorted(domains.items())),
        **problems.metrics(),
    }
    (tmp / "README.md").write_text(dataset_card(source, result, card), encoding="utf-8")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return result


def dataset_card(source: Path, result: dict[str, Any], card: dict[str, Any]) -> str:
    """README.md of the Hugging Face dataset: YAML metadata (the Hub's fields plus ``vital:``) and prose."""
    n = result["records"]
    size = next(
        (
            label
            for bound, label in ((1e3, "n<1K"), (1e4, "1K<n<10K"), (1e5, "10K<n<100K"), (1e6, "100K<n<1M"))
            if n < bound
        ),
        "n>1M",
    )
    licenses = result["by_license"]
    header = {
        "license": "other",
        "pretty_name": card.get("pretty_name", f"vital {source.stem}"),
        "language": ["en"],
        "task_categories": ["visual-question-answering", "image-text-to-text"],
        "tags": ["biomedical", "medical", "instruction-tuning", "llava", "pmc"],
        "size_categories": [size],
        "configs": [
            {"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*.parquet"}]}
        ],
        "dataset_info": {"splits": [{"name": "train", "num_examples": n}]},
        "vital": {
            "records": n,
            "images": result["images"],
            "dropped": result["dropped"],
            "dropped_by_reason": result["dropped_by_reason"],
            "by_license": licenses,
            "by_domain": result["by_domain"],
            "selection": card.get("selection", {}),
            "provenance": card.get("provenance", {}),
        },
    }
    rows = "\n".join(f"| {name} | {count} |" for name, count in licenses.items())
    selection = card.get("selection", {})
    return (
        "---\n"
        + yaml.safe_dump(header, sort_keys=False, allow_unicode=True, width=100)
        + "---\n\n"
        + f"# {header['pretty_name']}\n\n"
        + f"{n} biomedical visual instruction-following conversations over {result['images']} figures, "
        + f"curated by vital from `{source.name}`"
        + (f" ({selection.get('method')})" if selection.get("method") else "")
        + ". Each row holds the figure's bytes (`image`), the LLaVA conversation (`conversations`, `<image>` "
        + "in the first human turn), and the figure's article: `pmid`, `pmcid` and `license`.\n\n"
        + "## Licenses\n\nEach figure keeps the license of the PMC Open Access article it comes from; "
        + "use and redistribute each row under its own license (`unknown`: not recorded, check the article).\n\n"
        + "| license | records |\n|---|---|\n"
        + rows
        + "\n\n## Selection and provenance\n\nThe `vital` section of the header above gives the selection "
        + "method and its parameters, and the curated file's digest and the commit it was made from.\n\n"
        + "## Citation\n\n```bibtex\n"
        + CITATION
        + "\n```\n"
    )


def export(
    curated: Path,
    fmt: str,
    out: Path,
    root: Path,
    card: dict[str, Any] | None = None,
    shard_rows: int = 5000,
) -> dict[str, Any]:
    """Export one curated set in one format (``llava`` or ``hf``); returns its counts."""
    if fmt not in FORMATS:
        raise RecordError(f"export format {fmt!r}: one of {list(FORMATS)}")
    curated, out = Path(curated), Path(out)
    records = read_curated(curated)
    if fmt == "llava":
        result = export_llava(records, curated, Path(root), out)
    else:
        card = card or {}
        card.setdefault("provenance", {}).setdefault("curated_sha256", file_sha256(curated))
        result = export_hf(records, curated, Path(root), out, card, shard_rows)
    return result


# ------------------------------------------------------------------ the stage and the card's facts
def selection_of(p: Params, subset: str) -> dict[str, Any]:
    """How a curated set was chosen, for the card: the method and the params it depends on."""
    upstream = {
        "generate": {
            "backend": p.generate.backend,
            "model": p.generate.model,
            "candidates": p.generate.candidates,
        },
        "judge": {"backend": p.judge.backend, "model": p.judge.model},
        "labels": {"backend": p.labels.backend},
        "selector": p.selector.model_dump(mode="json"),
        "curate": p.curate.model_dump(mode="json"),
        "sample": {
            "per_domain": p.sample.per_domain,
            "domains": p.sample.domains,
            "licenses": p.sample.licenses,
        },
    }
    if subset in p.curate.mix:
        method = f"mixture of {', '.join(p.curate.mix[subset])}"
    elif subset.startswith("top"):
        method = f"selector top {subset[3:]}% ({p.curate.policy}), clinician-preference-aligned ratings"
    else:
        method = f"random baseline: {subset[6:]}% drawn without the selector (seed {p.curate.seed})"
    return {"subset": subset, "method": method, "params": upstream}


def provenance_of(p: Params, curated: Path, root: Path) -> dict[str, Any]:
    from vital.gitrepo import git_commit

    commit, dirty = git_commit(root)
    corpus = p.sample.corpus
    return {
        "curated": repo_relative(str(curated), root),
        "curated_sha256": file_sha256(curated),
        "git_commit": commit or "unknown",
        "git_dirty": dirty,
        "corpus": {
            "format": corpus.format,
            "path": corpus.path or "data/corpus/figures.jsonl",
            "shards": corpus.shards,
        },
        "oa_file_list": corpus.oa_file_list,
    }


def run_stage(p: Params, paths: Paths) -> dict[str, Any]:
    """``artifacts/export/<subset>/<format>`` for every ``export.subsets`` x ``export.formats``."""
    out: dict[str, Any] = {}
    for subset in p.export.subsets:
        curated = paths.curated / f"{subset}.json"
        card = {
            "pretty_name": f"vital {subset}",
            "selection": selection_of(p, subset),
            "provenance": provenance_of(p, curated, paths.root),
        }
        for fmt in p.export.formats:
            dest = paths.root / "artifacts" / "export" / subset / fmt
            result = export(curated, fmt, dest, paths.corpus, card, p.export.shard_rows)
            out[f"{subset}/{fmt}"] = result
            print(
                f"export: {subset} as {fmt}: {result['records']} records, {result['dropped']} skipped -> {dest}"
            )
    return {"exports": out}


def curated_files(p: Params, root: Path) -> list[str]:
    """The curated sets ``export.subsets`` names."""
    return [f"artifacts/curated/{s}.json" for s in p.export.subsets]
