"""The synthetic demo world: figures with hidden findings, PMC-style records, a VQA set, demonstrations.

``build_world(Path("data"), params.world)`` writes::

    corpus/images/<domain>/<pair_id>.png   modality-styled phantoms with visible findings
    corpus/figures.jsonl                   PMC / LLaVA-Med figure records (what the pipeline sees)
    corpus/truth.jsonl                     hidden findings (read only by simulators and world evaluation)
    vqa/demo/questions.jsonl, images/      held-out VQA figures (never in the corpus): the test split
    vqa/demo/train.jsonl                   its train split, on figures of its own (for `finetune`)
    demonstrations/<domain>.json           synthetic few-shot demonstrations (stand-ins for clinicians')
    labels/README.md                       where real clinicians' preference files go
    world.json                             params used + counts

Side convention everywhere: left/right = the viewer's left/right half of the image.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np

from vital.io import RecordError, read_jsonl, write_json, write_jsonl
from vital.params import WorldParams
from vital.progress import progress
from vital.schema import DOMAINS
from vital.seeding import rng_for, stable_seed
from vital.world.captions import write_caption
from vital.world.conversation import question_kinds, write_conversation
from vital.world.findings import MODALITIES, STYLES, sample_truth
from vital.world.render import render
from vital.world.vqa import questions_for

__all__ = ["DOMAINS", "MODALITIES", "STYLES", "build_world", "load_truth", "stable_seed", "vqa_truth"]

DEMOS_PER_DOMAIN = 4


def _ids(n: int, rng: np.random.Generator) -> list[tuple[str, str, int]]:
    """(pair_id, pmid, figure number): unique PMC ids, 1-4 figures per article."""
    out: list[tuple[str, str, int]] = []
    pmcids = rng.choice(np.arange(2_000_000, 9_000_000), size=n, replace=False)
    pmids = rng.choice(np.arange(20_000_000, 38_000_000), size=n, replace=False)
    i = 0
    while len(out) < n:
        for fig in range(1, int(rng.integers(1, 5)) + 1):
            if len(out) == n:
                break
            out.append((f"PMC{pmcids[i]}_F{fig}", str(pmids[i]), fig))
        i += 1
    return out


def _domains(n: int, rng: np.random.Generator) -> list[str]:
    """Balanced domains in a shuffled order."""
    doms = [DOMAINS[i % len(DOMAINS)] for i in range(n)]
    return [doms[i] for i in rng.permutation(n)]


def _save_png(img, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="PNG", optimize=True)


def _corpus(out: Path, cfg: WorldParams) -> dict[str, int]:
    corpus = out / "corpus"
    shutil.rmtree(corpus / "images", ignore_errors=True)
    master = rng_for(cfg.seed, "corpus")
    ids = _ids(cfg.figures, master)
    domains = _domains(cfg.figures, master)
    figures, truths = [], []
    omitted = 0
    for (pair_id, pmid, fig), domain in progress(
        zip(ids, domains, strict=True), "world: corpus", cfg.figures
    ):
        rng = rng_for(cfg.seed, "figure", pair_id)
        truth = sample_truth(pair_id, domain, rng, cfg.lesion_rate)
        image = f"images/{domain}/{pair_id}.png"
        _save_png(render(truth, cfg.image_size, rng), corpus / image)
        omit = bool(rng.random() < cfg.caption_omits_side)
        caption, mention = write_caption(truth, f"Figure {fig}", omit, rng, cfg.caption_vague)
        omitted += omit and truth["lesion"]
        figures.append(
            {
                "pair_id": pair_id,
                "pmid": pmid,
                "fig_label": f"Figure {fig}",
                "fig_caption": caption,
                "in_text_mention": [{"tokens": mention}] if mention else [],
                "domain": {d: d == domain for d in DOMAINS},
                "image": image,
            }
        )
        truths.append({**truth, "image": image, "caption_states_side": truth["lesion"] and not omit})
    write_jsonl(corpus / "figures.jsonl", figures)
    write_jsonl(corpus / "truth.jsonl", truths)
    return {
        "figures": len(figures),
        "with_lesion": sum(t["lesion"] for t in truths),
        "captions_omitting_side": omitted,
        **{f"domain_{d}": domains.count(d) for d in DOMAINS},
    }


def vqa_truth(cfg: WorldParams, split: str = "test") -> dict[str, dict]:
    """vqa figure id -> hidden findings of a VQA split, replayed from the world's params (the world writes
    no truth file for its VQA figures; the draws are those :func:`_vqa_split` made, without rendering)."""
    stream = "vqa" if split == "test" else f"vqa_{split}"
    n = cfg.vqa_figures if split == "test" else cfg.vqa_train_figures
    truth: dict[str, dict] = {}
    for i, domain in enumerate(_domains(n, rng_for(cfg.seed, stream))):
        vid = f"{stream}_{i:05d}"
        truth[vid] = sample_truth(vid, domain, rng_for(cfg.seed, stream, vid), cfg.lesion_rate)
        truth[vid]["image"] = f"images/{domain}/{vid}.png"
    return truth


def _vqa_split(root: Path, cfg: WorldParams, split: str, n: int) -> list[dict]:
    """``n`` held-out figures and their questions; the splits draw from their own seeds, never the corpus."""
    stream = "vqa" if split == "test" else f"vqa_{split}"
    prefix = "vqa" if split == "test" else f"vqa_{split}"
    domains = _domains(n, rng_for(cfg.seed, stream))
    questions: list[dict] = []
    for i, domain in enumerate(progress(domains, f"world: vqa {split}")):
        vid = f"{prefix}_{i:05d}"
        rng = rng_for(cfg.seed, stream, vid)
        truth = sample_truth(vid, domain, rng, cfg.lesion_rate)
        image = f"images/{domain}/{vid}.png"
        _save_png(render(truth, cfg.image_size, rng), root / image)
        questions.extend(questions_for(truth, image, rng))
    return questions


def _vqa(out: Path, cfg: WorldParams) -> dict[str, int]:
    root = out / "vqa" / "demo"
    shutil.rmtree(root / "images", ignore_errors=True)
    questions = _vqa_split(root, cfg, "test", cfg.vqa_figures)
    write_jsonl(root / "questions.jsonl", questions)
    train = _vqa_split(root, cfg, "train", cfg.vqa_train_figures)
    write_jsonl(root / "train.jsonl", train)
    closed = [q for q in questions if q["answer_type"] == "CLOSED"]
    return {
        "vqa_figures": cfg.vqa_figures,
        "vqa_questions": len(questions),
        "vqa_closed": len(closed),
        "vqa_closed_yes": sum(q["answer"] == "yes" for q in closed),
        "vqa_train_figures": cfg.vqa_train_figures,
        "vqa_train_questions": len(train),
    }


def _demonstrations(out: Path, cfg: WorldParams) -> int:
    """Synthetic few-shot demonstrations per domain, written from hidden truth on figures that are not in the
    corpus: stand-ins for clinician-selected ones (a paid generate refuses them: generate.allow_synthetic)."""
    n = 0
    for domain in DOMAINS:
        demos = []
        for k in range(DEMOS_PER_DOMAIN):
            did = f"demo_{domain}_{k + 1}"
            rng = rng_for(cfg.seed, "demo", did)
            truth = sample_truth(did, domain, rng)
            if k == 0:  # every domain shows one normal figure so generators learn to say "no lesion"
                truth.update(lesion=False, side=None, count=0, size=None, lesions=[])
            caption, mention = write_caption(truth, f"Figure {k + 1}", False, rng, vague_rate=0.0)
            kinds = question_kinds(truth, 2 + k % 2, rng, first="findings" if k % 2 else "describe")
            demos.append(
                {
                    "id": did,
                    "fig_caption": caption,
                    "in_text_mention": [{"tokens": mention}] if mention else [],
                    "conversations": write_conversation(truth, kinds, rng),
                }
            )
        write_json(out / "demonstrations" / f"{domain}.json", demos)
        n += len(demos)
    return n


LABELS_README = """# Clinician labels

Put real clinicians' preference files here as `*.jsonl` (one JSON object per line); the `labels` stage
with `labels.backend: files` reads every `*.jsonl` in this folder, validates it, and writes
`artifacts/labels.jsonl`. No code changes are needed.

Each line is a `vital.schema.Preference`:

```json
{"pair_id": "PMC1234567_F2", "annotator": "dr_smith", "ranking": ["PMC1234567_F2#3", "PMC1234567_F2#0"], "ties": [], "source": "files"}
```

- `ranking`: candidate ids (`<pair_id>#<k>` from `artifacts/candidates.jsonl`), best first; at least two,
  no duplicates, all of the same figure `pair_id`. A pairwise comparison is a ranking of two.
- `ties`: optional groups of candidate ids from `ranking` judged equally good.
- `annotator`: a stable pseudonymous id per clinician (used for clinician–clinician agreement).
- `seen`: optional `{candidate id: digest}` of the texts ranked (`vital annotate` writes it). A ranking
  whose candidate was regenerated since (same id, other text) is skipped as `candidate_changed`.

Lines that name unknown candidates, repeat an id, or rank fewer than two candidates are skipped and
listed (file:line and reason) in `metrics/labels.json`; an empty file is reported there too.
"""


def build_world(out: Path, cfg: WorldParams) -> dict:
    """Write the demo world under ``out`` (usually ``data/``) and return a summary (also ``world.json``)."""
    out = Path(out)
    start = time.perf_counter()
    summary: dict = {"params": cfg.model_dump(mode="json")}
    summary.update(_corpus(out, cfg))
    summary.update(_vqa(out, cfg))
    summary["demonstrations"] = _demonstrations(out, cfg)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    (out / "labels" / "README.md").write_text(LABELS_README, encoding="utf-8")
    write_json(out / "world.json", summary)
    # wall time is reported but kept out of world.json so rebuilding gives byte-identical files
    return {**summary, "wall_s": round(time.perf_counter() - start, 2)}


def load_truth(path: Path) -> dict[str, dict]:
    """pair_id -> hidden findings, from ``corpus/truth.jsonl``."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: hidden truth not found (build the demo world with `vital world`)")
    truth: dict[str, dict] = {}
    for i, rec in enumerate(read_jsonl(path), 1):
        pid = rec.get("pair_id")
        if not pid:
            raise RecordError(f"{path}: record {i} has no pair_id")
        truth[pid] = rec
    return truth
