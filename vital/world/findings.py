"""Hidden ground truth of a demo figure and the vocabulary each domain uses to talk about it.

Side convention: ``left``/``right`` always mean the viewer's left/right half of the IMAGE (not the
patient's side). Captions, conversations and VQA answers all use this convention and say so
("in the left half of the image").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vital.schema import DOMAINS


@dataclass(frozen=True)
class DomainStyle:
    modality: str  # the short answer to "What imaging modality is this?"
    modality_long: str  # how a conversation names it
    region: str
    noun: str  # the lesion as this domain calls it (singular)
    plural: str
    caption_heads: tuple[str, ...]  # PMC-style openings of a caption
    mention_heads: tuple[str, ...]  # short form used in in-text mentions


STYLES: dict[str, DomainStyle] = {
    "chest_xray": DomainStyle(
        modality="x-ray",
        modality_long="frontal chest X-ray (radiograph)",
        region="lung parenchyma",
        noun="nodule",
        plural="nodules",
        caption_heads=("Chest X-ray", "Posteroanterior chest radiograph", "Frontal chest X-ray"),
        mention_heads=("chest X-ray", "chest radiography"),
    ),
    "ct_scan": DomainStyle(
        modality="ct",
        modality_long="axial CT (computed tomography) scan of the abdomen",
        region="abdomen",
        noun="hypodense lesion",
        plural="hypodense lesions",
        caption_heads=(
            "Axial CT scan of the abdomen",
            "Contrast-enhanced CT image",
            "Axial computed tomography (CT) section",
        ),
        mention_heads=("abdominal CT", "contrast-enhanced CT"),
    ),
    "mri": DomainStyle(
        modality="mri",
        modality_long="axial T2-weighted MRI of the brain",
        region="brain parenchyma",
        noun="hyperintense lesion",
        plural="hyperintense lesions",
        caption_heads=(
            "Axial T2-weighted MRI of the brain",
            "Brain MRI (FLAIR sequence)",
            "Magnetic resonance imaging (MRI) of the head",
        ),
        mention_heads=("brain MRI", "MRI of the head"),
    ),
    "histology": DomainStyle(
        modality="histology",
        modality_long="H&E-stained histology section",
        region="tissue section",
        noun="tumor nest",
        plural="tumor nests",
        caption_heads=(
            "Photomicrograph of the biopsy (H&E stain, x200)",
            "Histology section stained with hematoxylin and eosin",
            "H&E-stained tissue section (x100)",
        ),
        mention_heads=("histology", "H&E staining"),
    ),
    "gross": DomainStyle(
        modality="gross",
        modality_long="gross photograph of a resected specimen",
        region="specimen",
        noun="nodule",
        plural="nodules",
        caption_heads=(
            "Gross photograph of the resected specimen",
            "Macroscopic view of the surgical specimen",
            "Gross specimen after formalin fixation",
        ),
        mention_heads=("gross examination", "macroscopic examination"),
    ),
}

MODALITIES: dict[str, str] = {d: s.modality for d, s in STYLES.items()}
SIDES = ("left", "right")
SIZES = ("small", "large")
LESION_RATE = 0.8  # default share of figures with at least one lesion (world.lesion_rate)


def sample_truth(
    pair_id: str, domain: str, rng: np.random.Generator, lesion_rate: float = LESION_RATE
) -> dict:
    """Findings of one figure; ``lesions`` holds normalised (x, y, r) centres for the renderer."""
    if domain not in STYLES:
        raise ValueError(f"{pair_id}: unknown domain {domain!r}; expected one of {DOMAINS}")
    lesion = bool(rng.random() < lesion_rate)
    truth = {
        "pair_id": pair_id,
        "domain": domain,
        "modality": MODALITIES[domain],
        "lesion": lesion,
        "side": None,
        "count": 0,
        "size": None,
        "lesions": [],
    }
    if lesion:
        side = SIDES[int(rng.integers(2))]
        count = int(rng.choice([1, 2, 3], p=[0.5, 0.3, 0.2]))
        size = SIZES[int(rng.integers(2))]
        truth.update(side=side, count=count, size=size, lesions=_place(side, count, size, rng))
    return truth


def _place(side: str, count: int, size: str, rng: np.random.Generator) -> list[list[float]]:
    radius = 0.045 if size == "small" else 0.075
    x_lo, x_hi = (0.22, 0.36) if side == "left" else (0.64, 0.78)
    # stack lesions vertically with a gap so they never merge into one blob
    slots = np.array([0.27, 0.5, 0.73]) if count > 1 else np.array([0.5])
    ys = rng.choice(slots, size=count, replace=False) + rng.uniform(-0.03, 0.03, size=count)
    xs = rng.uniform(x_lo, x_hi, size=count)
    return [[round(float(x), 4), round(float(y), 4), radius] for x, y in zip(xs, sorted(ys), strict=True)]
