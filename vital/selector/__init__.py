"""The selection model: an MLP rating head on CLIP features, trained on weighted preference pairs.

It distils judge scores (model pairs, weight 1) and clinician comparisons (human pairs, weight
``selector.human_weight``) into one unbounded rating. Features come from the embed stage, so a sweep over
this head's params never recomputes them; with ``selector.finetune_backbone`` the CLIP towers train with
the head instead (``vital.selector.backbone``).

Modules: ``features`` (the head's input and its names), ``model`` (the head), ``data`` (pairs, judge
scores, clinician rankings), ``train``, ``evidence`` (agreement statistics), ``store`` (the saved
selector), ``backbone`` (end-to-end fine-tuning) and ``stage`` (the select stage's ``run``).
"""

from __future__ import annotations

from vital.selector.data import PairSet, read_pairs, to_pairset
from vital.selector.evidence import (
    agreement,
    bootstrap_gap,
    clinician_agreement,
    kendall_tau,
    pooled_auc,
    random_rater,
    rater_report,
)
from vital.selector.features import embedding_features, feature_names, head_features
from vital.selector.model import FrozenFeatureRater, RatingHead
from vital.selector.stage import best_weight, check_device, run
from vital.selector.store import load_selector, save_selector, score_all
from vital.selector.train import TrainResult, pair_loss, rate_all, train_rater

__all__ = [
    "FrozenFeatureRater",
    "PairSet",
    "RatingHead",
    "TrainResult",
    "agreement",
    "best_weight",
    "bootstrap_gap",
    "check_device",
    "clinician_agreement",
    "embedding_features",
    "feature_names",
    "head_features",
    "kendall_tau",
    "load_selector",
    "pair_loss",
    "pooled_auc",
    "random_rater",
    "rate_all",
    "rater_report",
    "read_pairs",
    "run",
    "save_selector",
    "score_all",
    "to_pairset",
    "train_rater",
]
