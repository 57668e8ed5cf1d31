"""Held-out synthetic VQA questions (closed yes/no balanced, and short open answers) from the truth.

Phrased unlike the generator's questions, but only in words the demo world's text uses: the demo LLM
learns its whole language from the corpus and the instruction data, so a word it never read (say
"slide" for a histology section) would test its vocabulary, not what it sees.
"""

from __future__ import annotations

import numpy as np

from vital.world.findings import MODALITIES

MODALITY_NAMES = {
    "x-ray": "an X-ray",
    "ct": "a CT scan",
    "mri": "an MRI",
    "histology": "a histology section",
    "gross": "a gross specimen photograph",
}


def _closed_options(truth: dict) -> dict[str, list[tuple[str, str]]]:
    """Closed questions this figure can ask, grouped by their answer ('yes'/'no')."""
    opts: dict[str, list[tuple[str, str]]] = {"yes": [], "no": []}
    mod = truth["modality"]
    opts["yes"].append(("modality", f"Is this {MODALITY_NAMES[mod]}?"))
    for other in sorted(set(MODALITIES.values()) - {mod}):
        opts["no"].append(("modality", f"Is this {MODALITY_NAMES[other]}?"))
    if truth["lesion"]:
        for side in ("left", "right"):
            ans = "yes" if side == truth["side"] else "no"
            opts[ans].append(("side", f"Is there a lesion on the {side} side of the image?"))
        many = "yes" if truth["count"] > 1 else "no"
        opts[many].append(("count", "Is there more than one lesion?"))
        opts["no" if many == "yes" else "yes"].append(("count", "Is there only a single lesion?"))
        opts["yes"].append(("presence", "Is there a lesion in this image?"))
    else:
        opts["no"].append(("presence", "Is there a lesion in this image?"))
        opts["no"].append(("side", "Is there a lesion on the left side of the image?"))
        opts["yes"].append(("presence", "Is this image without lesions?"))
    return opts


def _open_questions(truth: dict) -> list[tuple[str, str, str]]:
    qs = [("modality", "What imaging modality is this?", truth["modality"])]
    if truth["lesion"]:
        qs.append(("side", "Which side of the image is the lesion on?", truth["side"]))
        qs.append(("count", "How many lesions are there?", str(truth["count"])))
        qs.append(("size", "Is the lesion small or large?", truth["size"]))
    else:
        qs.append(("count", "How many lesions are there?", "0"))
    return qs


def questions_for(truth: dict, image: str, rng: np.random.Generator) -> list[dict]:
    """Two closed questions with independently drawn yes/no answers plus one or two open questions."""
    out: list[dict] = []
    opts = _closed_options(truth)
    used: set[str] = set()
    for _ in range(2):
        want = "yes" if rng.random() < 0.5 else "no"
        choices = [o for o in opts[want] if o[1] not in used]
        if not choices:  # this figure has no unused question with that answer
            want = "no" if want == "yes" else "yes"
            choices = [o for o in opts[want] if o[1] not in used]
        kind, q = choices[int(rng.integers(len(choices)))]
        used.add(q)
        out.append({"question": q, "answer": want, "answer_type": "CLOSED", "kind": kind})
    opens = _open_questions(truth)
    for i in rng.permutation(len(opens))[: 1 + int(rng.integers(2))]:
        kind, q, a = opens[int(i)]
        out.append({"question": q, "answer": a, "answer_type": "OPEN", "kind": kind})
    base = truth["pair_id"]
    return [
        {"question_id": f"{base}_q{j}", "image": image, "domain": truth["domain"], **q}
        for j, q in enumerate(out)
    ]
