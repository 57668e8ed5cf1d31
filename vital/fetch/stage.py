"""The fetch stage: the sampled figures into ``artifacts/figures``; a no-op when ``fetch.enabled`` is off."""

from __future__ import annotations

import shutil
from pathlib import Path

from vital.failures import StageFailed
from vital.fetch.inputs import read_url_records
from vital.fetch.options import FetchOptions, options_from
from vital.fetch.run import fetch_figures
from vital.fetch.shards import REPORT, SUMMARY, write_index
from vital.io import write_json


def stage_options(fp) -> FetchOptions:
    """FetchOptions from the ``fetch`` params section, staging and downloads in its ``cache_dir``."""
    cache = Path(fp.cache_dir)
    return options_from(fp, staging=cache / "figures", downloads=cache / "downloads")


def run_stage(p, paths) -> dict:
    """The fetch stage: the sampled figures into ``artifacts/figures`` (shards, ``index.parquet``,
    ``report.jsonl``, ``summary.json``) and its record (``metrics/detail/fetch.json``). With ``fetch.enabled`` off (the demo,
    whose images are local files) it reads nothing and writes an empty index."""
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
    reasons = summary.get("by_reason", {})
    metrics = {
        "enabled": True,
        **{k: v for k, v in summary.items() if k != "by_reason"},
        # figures not fetched, by reason; each is listed with its reason in report.jsonl
        "failed": sum(reasons.values()),
        "failed_by_reason": reasons,
        "failed_examples": [],
    }
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
