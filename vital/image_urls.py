"""LLaVA-Med's image-URL file joined onto sampled figure records (``sample.corpus.image_urls``): each record
gets its ``pmc_tar_url`` and ``image_file_path``, which the fetch stage downloads."""

from __future__ import annotations

from pathlib import Path

from vital.corpus import Malformed, reader
from vital.drops import Drops


def join_image_urls(records: list[dict], path: Path, problems: Drops) -> dict[str, int]:
    """Add LLaVA-Med's ``pmc_tar_url`` and ``image_file_path`` to sampled records (first line wins)."""
    wanted = {r["pair_id"]: r for r in records}
    done: set[str] = set()
    for where, raw in reader("llava_med_image_urls", "image_urls").read(path):
        if isinstance(raw, Malformed):
            problems.add(f"image_urls_{raw.reason}", where, raw.detail)
            continue
        pid = raw["pair_id"]
        if pid in done:  # only the sampled pair_ids are tracked: memory stays bounded by the sample
            problems.add(
                "image_urls_duplicate_pair_id", where, f"{pid} appears earlier (first wins)", pair_id=pid
            )
        elif pid in wanted:
            done.add(pid)
            wanted[pid]["pmc_tar_url"] = raw["pmc_tar_url"]
            wanted[pid]["image_file_path"] = raw["image_file_path"]
    return {"joined": len(done), "without_url": len(wanted) - len(done)}
