"""A fetch's outputs on disk: the shards packed from staged figures in input order (each with its manifest), the
``index.parquet`` over them, and the names of the report and summary beside them."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from vital.fetch.options import Figure, Permanent
from vital.fetch.packages import _staged
from vital.io import FILE_MODE, RecordError, read_json, write_json
from vital.shards import ShardWriter, file_sha256, make_ref

INDEX = "index.parquet"
REPORT = "report.jsonl"
SUMMARY = "summary.json"
SETTINGS = "fetch.json"  # what decides shard contents: a rerun must use the same


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
