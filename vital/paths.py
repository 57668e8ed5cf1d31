"""Where each stage reads and writes, relative to the repository root.

dvc.yaml declares the same paths; tests pass a different root.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Paths:
    root: Path = Path(".")

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    # raw inputs (data.dvc)
    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def corpus(self) -> Path:
        return self.data / "corpus"

    @property
    def figures(self) -> Path:
        return self.corpus / "figures.jsonl"

    @property
    def truth(self) -> Path:
        """Hidden ground truth of the demo world: read only by simulators and the evaluation of them."""
        return self.corpus / "truth.jsonl"

    @property
    def demonstrations(self) -> Path:
        return self.data / "demonstrations"

    @property
    def labels_dir(self) -> Path:
        return self.data / "labels"

    @property
    def vqa(self) -> Path:
        return self.data / "vqa"

    # models
    @property
    def foundation(self) -> Path:
        return self.root / "models" / "foundation"

    @property
    def base_model(self) -> Path:
        return self.root / "models" / "base"

    @property
    def selector(self) -> Path:
        return self.root / "models" / "selector"

    @property
    def tuned(self) -> Path:
        return self.root / "models" / "tuned"

    @property
    def finetuned(self) -> Path:
        return self.root / "models" / "finetuned"

    # intermediate artifacts
    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    @property
    def sample(self) -> Path:
        return self.artifacts / "sample.jsonl"

    @property
    def fetched(self) -> Path:
        """The fetch stage's output: shards, ``index.parquet``, ``report.jsonl``, ``summary.json``."""
        return self.artifacts / "figures"

    @property
    def candidates(self) -> Path:
        return self.artifacts / "candidates.jsonl"

    @property
    def judgments(self) -> Path:
        return self.artifacts / "judgments.jsonl"

    @property
    def labels(self) -> Path:
        return self.artifacts / "labels.jsonl"

    @property
    def pairs(self) -> Path:
        return self.artifacts / "pairs.jsonl"

    @property
    def embeddings(self) -> Path:
        return self.artifacts / "embeddings"

    @property
    def scores(self) -> Path:
        return self.artifacts / "scores.jsonl"

    @property
    def scores_by_weight(self) -> Path:
        """Every selector head's scores by human weight (select; read by the bakeoff)."""
        return self.artifacts / "scores_by_weight.jsonl"

    @property
    def bakeoff(self) -> Path:
        return self.artifacts / "bakeoff"

    @property
    def curated(self) -> Path:
        return self.artifacts / "curated"

    @property
    def predictions(self) -> Path:
        return self.artifacts / "predictions"

    @property
    def predictions_finetuned(self) -> Path:
        return self.artifacts / "predictions_finetuned"

    # metrics and plots (not cached by DVC)
    @property
    def metrics(self) -> Path:
        return self.root / "metrics"

    def metric(self, stage: str) -> Path:
        return self.metrics / f"{stage}.json"

    @property
    def plots(self) -> Path:
        return self.metrics / "plots"

    # request cache for model-facing calls: persistent, outside every DVC output
    @property
    def request_cache(self) -> Path:
        return self.root / ".vital" / "cache"


def is_local(spec: str, root: Path = Path(".")) -> bool:
    """Whether a model reference is a local directory (under ``root``) rather than a hub id ``owner/name``."""
    first = Path(spec).parts[0] if Path(spec).parts else ""
    return (
        (root / spec).exists()
        or Path(spec).is_absolute()
        or spec.startswith(".")
        or spec.count("/") != 1
        or first == "models"
        or (root / first).is_dir()
    )


def repo_relative(path: str | Path, root: Path = Path(".")) -> str:
    """``path`` as DVC names it in dvc.yaml: relative to the repository root when inside it, POSIX style."""
    path = Path(path)
    if path.is_absolute():
        try:
            path = path.resolve().relative_to(Path(root).resolve())
        except ValueError:
            return path.as_posix()
    return path.as_posix()
