"""The demo world: layout, determinism, visible findings, captions, VQA balance, demonstrations."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vital.demo.claims import agreement, extract_claims
from vital.io import read_json, read_jsonl
from vital.params import WorldParams
from vital.schema import DOMAINS, FigureRecord
from vital.world import build_world, load_truth
from vital.world.conversation import MODALITY_ASKED, QUESTIONS

SMALL = WorldParams(figures=60, vqa_figures=15, seed=3)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("world")
    return out, build_world(out, SMALL)


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_layout_and_records(world):
    out, summary = world
    assert summary["figures"] == 60 and summary["vqa_figures"] == 15
    assert sum(summary[f"domain_{d}"] for d in DOMAINS) == 60
    records = [FigureRecord.model_validate(r) for r in read_jsonl(out / "corpus" / "figures.jsonl")]
    assert len(records) == len({r.pair_id for r in records}) == 60
    for r in records:
        assert set(r.domain) == set(DOMAINS) and sum(r.domain.values()) == 1
        assert r.image == f"images/{r.primary_domain}/{r.pair_id}.png"
        assert r.fig_caption.strip() and r.fig_label.startswith("Figure ")
        with Image.open(out / "corpus" / r.image) as img:
            assert img.size == (64, 64)
    raw = next(read_jsonl(out / "corpus" / "figures.jsonl"))
    assert all(isinstance(m, dict) and "tokens" in m for m in raw["in_text_mention"])  # LLaVA-Med format
    assert (out / "labels" / "README.md").read_text().count('"ranking"') >= 1
    assert read_json(out / "world.json")["params"]["seed"] == 3


def test_truth_matches_records(world):
    out, _ = world
    truth = load_truth(out / "corpus" / "truth.jsonl")
    for r in read_jsonl(out / "corpus" / "figures.jsonl"):
        t = truth[r["pair_id"]]
        assert t["domain"] == FigureRecord.model_validate(r).primary_domain
        if t["lesion"]:
            assert t["side"] in ("left", "right") and 1 <= t["count"] == len(t["lesions"]) <= 3
            assert t["size"] in ("small", "large")
        else:
            assert t["side"] is None and t["count"] == 0 and not t["lesions"]


def test_same_params_give_identical_bytes(world, tmp_path):
    out, _ = world
    build_world(tmp_path, SMALL)
    assert _digest(tmp_path) == _digest(out)


def test_other_seed_gives_other_world(world, tmp_path):
    out, _ = world
    build_world(tmp_path, SMALL.model_copy(update={"seed": 4}))
    assert (tmp_path / "corpus" / "truth.jsonl").read_bytes() != (out / "corpus" / "truth.jsonl").read_bytes()


def test_lesions_are_visible_on_their_side(world):
    """The pixel at a lesion centre differs clearly from the mirrored point in the other half."""
    out, _ = world
    for t in load_truth(out / "corpus" / "truth.jsonl").values():
        img = np.asarray(Image.open(out / "corpus" / t["image"]).convert("L"), dtype=float)
        for x, y, _r in t["lesions"]:
            assert (x < 0.5) == (t["side"] == "left")
            px, py = int(x * 64), int(y * 64)
            mirror = int((1 - x) * 64)
            assert abs(img[py, px] - img[py, mirror]) > 30, (t["pair_id"], x, y)


def test_captions_state_side_only_when_allowed(tmp_path):
    for omit, states in ((0.0, True), (1.0, False)):
        out = tmp_path / str(omit)
        build_world(out, WorldParams(figures=40, vqa_figures=5, caption_omits_side=omit))
        truth = load_truth(out / "corpus" / "truth.jsonl")
        for r in read_jsonl(out / "corpus" / "figures.jsonl"):
            t = truth[r["pair_id"]]
            text = " ".join([r["fig_caption"], *(m["tokens"] for m in r["in_text_mention"])])
            side = extract_claims(text).get("side")
            assert side is None or side == t["side"]  # a caption never contradicts the truth
            if not states:
                assert side is None and not t["caption_states_side"]
        if states:
            assert any(t["caption_states_side"] for t in truth.values())


def test_vqa_is_separate_and_balanced(world):
    out, _ = world
    qs = list(read_jsonl(out / "vqa" / "demo" / "questions.jsonl"))
    assert 3 * 15 <= len(qs) <= 4 * 15
    assert len({q["question_id"] for q in qs}) == len(qs)
    corpus_ids = {r["pair_id"] for r in read_jsonl(out / "corpus" / "figures.jsonl")}
    for q in qs:
        assert set(q) >= {"question_id", "image", "question", "answer", "answer_type", "domain"}
        assert (out / "vqa" / "demo" / q["image"]).is_file()
        assert Path(q["image"]).stem not in corpus_ids
        if q["answer_type"] == "CLOSED":
            assert q["answer"] in ("yes", "no")
        else:
            assert q["answer_type"] == "OPEN" and q["answer"]
    closed = [q for q in qs if q["answer_type"] == "CLOSED"]
    assert 0.3 <= sum(q["answer"] == "yes" for q in closed) / len(closed) <= 0.7


def test_vqa_speaks_the_words_the_demo_llm_reads(tmp_path):
    # the demo LLM learns its language from captions, mentions and the generator's questions only
    build_world(tmp_path, WorldParams(figures=200, vqa_figures=60))
    read = set(" ".join(q for qs in QUESTIONS.values() for q in qs).lower().split())
    read |= set(" ".join(MODALITY_ASKED.values()).lower().split()) | {"left", "right"}
    for r in read_jsonl(tmp_path / "corpus" / "figures.jsonl"):
        text = r["fig_caption"] + " " + " ".join(m["tokens"] for m in r["in_text_mention"])
        read |= set(text.lower().replace(",", " ").replace(".", " ").split())
    asked = {q["question"] for q in read_jsonl(tmp_path / "vqa" / "demo" / "questions.jsonl")}
    assert len(asked) >= 12
    for q in asked:
        unread = [w for w in q.lower().rstrip("?").split() if w not in read]
        assert not unread, f"{q!r} uses words the demo LLM never reads: {unread}"


def test_vqa_answers_follow_the_truth(tmp_path):
    build_world(tmp_path, WorldParams(figures=10, vqa_figures=40))
    by_image: dict[str, list[dict]] = {}
    for q in read_jsonl(tmp_path / "vqa" / "demo" / "questions.jsonl"):
        by_image.setdefault(q["image"], []).append(q)
    for qs in by_image.values():
        answers = {q["question"]: q["answer"] for q in qs}
        side = answers.get("Which side of the image is the lesion on?")
        if side and "Is there a lesion on the left side of the image?" in answers:
            assert answers["Is there a lesion on the left side of the image?"] == (
                "yes" if side == "left" else "no"
            )
        if answers.get("How many lesions are there?") == "0":
            assert answers.get("Is there a lesion in this image?", "no") == "no"


def test_demonstrations(world):
    out, summary = world
    for d in DOMAINS:
        demos = read_json(out / "demonstrations" / f"{d}.json")
        assert 3 <= len(demos) <= 5
        for demo in demos:
            assert set(demo) == {"id", "fig_caption", "in_text_mention", "conversations"}
            turns = demo["conversations"]
            assert turns[0]["from"] == "human" and turns[0]["value"].startswith("<image>\n")
            assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2)
            said = extract_claims(" ".join(t["value"] for t in turns if t["from"] == "gpt"))
            assert agreement(said, extract_claims(demo["fig_caption"])) == 1.0  # demonstrations are correct
    assert summary["demonstrations"] == sum(
        len(read_json(p)) for p in (out / "demonstrations").glob("*.json")
    )


def test_bytes_per_figure_keep_default_world_small(world):
    out, _ = world
    images = sum(p.stat().st_size for p in (out / "corpus" / "images").rglob("*.png"))
    # default world: 1200 + 200 figures must stay well under ~12 MB
    assert images / 60 * 1400 < 10e6


def test_load_truth_missing_file_names_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="truth.jsonl"):
        load_truth(tmp_path / "truth.jsonl")


def test_lesion_rate_and_vague_captions(tmp_path):
    build_world(tmp_path, WorldParams(figures=20, vqa_figures=5, lesion_rate=0.0, caption_vague=1.0))
    assert not any(t["lesion"] for t in load_truth(tmp_path / "corpus" / "truth.jsonl").values())
    for r in read_jsonl(tmp_path / "corpus" / "figures.jsonl"):
        assert set(extract_claims(r["fig_caption"])) <= {"modality"}  # vague: states no findings
    answers = {q["answer"] for q in read_jsonl(tmp_path / "vqa" / "demo" / "questions.jsonl")}
    assert "left" not in answers and "right" not in answers


def test_yes_no_questions_are_answered_yes_or_no_first_and_truthfully():
    import numpy as np

    from vital.world.conversation import write_conversation

    truth = {
        "domain": "ct_scan",
        "lesion": True,
        "side": "left",
        "count": 2,
        "size": "small",
        "modality": "ct",
    }
    rng = np.random.default_rng(0)
    seen = {}
    for _ in range(300):
        conv = write_conversation(truth, ["findings", "side", "count", "modality"], rng)
        for q, a in zip(conv[::2], conv[1::2], strict=True):
            seen[q["value"].removeprefix("<image>\n")] = a["value"]
    assert seen["Is the lesion in the left half of the image?"].startswith("Yes. ")
    assert seen["Is the lesion in the right half of the image?"].startswith("No. ")
    assert seen["Does the abnormality lie on the right side of the image?"].startswith("No. ")
    assert seen["Is there more than one lesion?"].startswith("Yes. ")
    assert seen["Is there only one lesion?"].startswith("No. ")
    assert seen["Are there any lesions present?"].startswith("Yes. ")
    assert seen["Does the image appear normal?"].startswith("No. ")
    assert seen["Is this image a CT scan?"].startswith("Yes. ")
    assert seen["Is this image an MRI scan?"].startswith("No. ")
    assert not seen["Where is the lesion located?"].startswith(("Yes", "No"))
    assert seen["Is this figure free of lesions?"].startswith("No. ")
    assert seen["Are there several lesions?"].startswith("Yes. ")
    assert seen["Is the abnormality on the left of the image?"].startswith("Yes. ")
    assert seen["Is this figure a CT scan?"].startswith("Yes. ")


def test_every_yes_no_wording_has_its_truth():
    # a yes/no question without a YES_NO entry would be answered without its "Yes."/"No." lead
    from vital.world.conversation import QUESTIONS, YES_NO

    asked = [q for qs in QUESTIONS.values() for q in qs]
    yes_no = [q for q in asked if q.split()[0] in ("Is", "Are", "Does", "Do") and " or " not in q]
    assert set(yes_no) == set(YES_NO)


def test_instruction_wordings_leave_the_vqa_wordings_to_generalise_to(tmp_path):
    # the VQA set asks in its own words: the tuned model must generalise to them, as a real one must
    from vital.world.conversation import QUESTIONS

    build_world(tmp_path, WorldParams(figures=40, vqa_figures=60))
    asked = {q["question"] for q in read_jsonl(tmp_path / "vqa" / "demo" / "questions.jsonl")}
    taught = {q for qs in QUESTIONS.values() for q in qs}
    assert len(taught) >= 30
    assert len(asked & taught) <= 1  # "Is there more than one lesion?", in both since the first world


def test_vqa_train_split_is_its_own_figures_and_leaves_the_test_split_alone(tmp_path):
    small, larger = tmp_path / "a", tmp_path / "b"
    build_world(small, WorldParams(figures=20, vqa_figures=10, vqa_train_figures=0))
    summary = build_world(larger, WorldParams(figures=20, vqa_figures=10, vqa_train_figures=12))
    demo = larger / "vqa" / "demo"
    # adding a train split does not change one test question, image or corpus figure
    assert (small / "vqa" / "demo" / "questions.jsonl").read_bytes() == (
        demo / "questions.jsonl"
    ).read_bytes()
    assert (small / "corpus" / "figures.jsonl").read_bytes() == (
        larger / "corpus" / "figures.jsonl"
    ).read_bytes()
    train = list(read_jsonl(demo / "train.jsonl"))
    test = list(read_jsonl(demo / "questions.jsonl"))
    assert summary["vqa_train_questions"] == len(train) >= 12 * 3
    train_images, test_images = {q["image"] for q in train}, {q["image"] for q in test}
    corpus = {r["image"] for r in read_jsonl(larger / "corpus" / "figures.jsonl")}
    assert len(train_images) == 12 and not train_images & test_images and not train_images & corpus
    assert all((demo / img).is_file() for img in train_images)
    assert {q["answer_type"] for q in train} == {"CLOSED", "OPEN"}
    assert not list(read_jsonl(small / "vqa" / "demo" / "train.jsonl"))  # an empty split is an empty file
