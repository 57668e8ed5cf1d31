"""Biomedical VQA evaluation sets (as distributed) and LLaVA-Med's metrics."""

from vital.vqa.items import LoadedSet, VQAItem
from vital.vqa.loaders import LOADERS, SetOptions, VQAFormatError, load_set
from vital.vqa.metrics import closed_baselines, normalize_answer, score_item, summarize

__all__ = [
    "LOADERS",
    "LoadedSet",
    "SetOptions",
    "VQAFormatError",
    "VQAItem",
    "closed_baselines",
    "load_set",
    "normalize_answer",
    "score_item",
    "summarize",
]
