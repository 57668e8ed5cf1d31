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

from vital.fetch.http import download
from vital.fetch.inputs import read_url_records, url_lines
from vital.fetch.options import FetchOptions, Figure, Permanent, url_problem
from vital.fetch.packages import extract
from vital.fetch.run import fetch_figures, fetch_images
from vital.fetch.shards import (
    INDEX,
    REPORT,
    SETTINGS,
    SUMMARY,
    remove_leftovers,
    shard_done,
    write_index,
    write_shard,
)
from vital.fetch.stage import run_stage, stage_options, stage_reads
from vital.ratelimit import HostRateLimiter, retry_after_s

__all__ = [
    "INDEX",
    "REPORT",
    "SETTINGS",
    "SUMMARY",
    "FetchOptions",
    "Figure",
    "HostRateLimiter",
    "Permanent",
    "download",
    "extract",
    "fetch_figures",
    "fetch_images",
    "read_url_records",
    "remove_leftovers",
    "retry_after_s",
    "run_stage",
    "shard_done",
    "stage_options",
    "stage_reads",
    "url_lines",
    "url_problem",
    "write_index",
    "write_shard",
]
