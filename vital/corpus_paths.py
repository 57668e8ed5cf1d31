"""What a stage reads of the corpus, from the params in force: the ``param_reads`` of the stage table
(vital/pipeline.py), which ``vital dag`` makes data deps. Imports nothing heavy: the DAG calls these for
every stage."""

from __future__ import annotations

from pathlib import Path

from vital.params import Params
from vital.paths import repo_relative


def corpus_files(p: Params, root: Path) -> list[str]:
    """The corpus index ``sample.corpus`` names, the image-URL file joined onto it, the fetch index whose
    shard refs replace the records' images (and its shards, when image checks open them), and the images
    whose thumbnails the diversity step clusters."""
    c = p.sample.corpus
    index = c.path or "data/corpus/figures.jsonl"
    files = [index, *([c.image_urls] if c.image_urls else []), *([c.oa_file_list] if c.oa_file_list else [])]
    if c.shards:
        files.append(c.shards)
        if c.check_images:
            files.append(str(Path(c.shards).parent))
    elif p.sample.diversity.clusters and c.check_images:
        files.append(str(Path(index).parent / c.images))
    return [repo_relative(f, root) for f in files]


def corpus_images(p: Params, root: Path) -> list[str]:
    """What stages that open the sampled figures read: the fetch stage's output when ``fetch.enabled``,
    the fetched shards when ``sample.corpus.shards`` is set (the index's folder), else the corpus' image
    folder."""
    if p.fetch.enabled:
        return ["artifacts/figures"]
    shards = p.sample.corpus.shards
    return [repo_relative(str(Path(shards).parent), root) if shards else "data/corpus/images"]


def align_reads(p: Params, root: Path) -> list[str]:
    """LLaVA-Med's stage 1 on a pretrained LLaVA (``align.backend: pretrained`` with ``align.steps`` > 0) trains on
    the sampled figures' captions and images; otherwise align reads no sample."""
    if p.align.backend != "pretrained" or p.align.steps == 0:
        return []
    return ["artifacts/sample.jsonl", *corpus_images(p, root)]
