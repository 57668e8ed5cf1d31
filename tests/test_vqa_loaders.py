"""Evaluation-set loaders, on small fixture files written in each release's own format."""

from __future__ import annotations

import collections
import json
import pickle
import typing
from pathlib import Path

import pytest
from PIL import Image

from vital.params import EvalSet
from vital.vqa.loaders import LOADERS, SetOptions, VQAFormatError, load_set


def _png(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (90, 90, 90)).save(path)


def _write_json(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def _write_jsonl(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# ------------------------------------------------------------------ fixtures in the distributed formats
def _vqa_rad(root: Path) -> Path:
    """OSF release: one JSON list for all splits, images in 'VQA_RAD Image Folder'."""
    for name in ("synpic54610.jpg", "synpic29265.jpg", "synpic100.jpg"):
        _png(root / "VQA_RAD Image Folder" / name)
    common = {
        "qid_linked_id": "x",
        "image_case_url": "https://medpix.nlm.nih.gov/case?id=x",
        "evaluation": "given",
    }
    common |= {"question_rephrase": "NULL", "question_relation": "NULL", "question_frame": "NULL"}
    rows = [
        {
            "qid": 0,
            "phrase_type": "freeform",
            "image_name": "synpic54610.jpg",
            "image_organ": "HEAD",
            "question": "Are regions of the brain infarcted?",
            "question_type": "PRES",
            "answer": "Yes",
            "answer_type": "CLOSED",
        },
        {
            "qid": 1,
            "phrase_type": "test_freeform",
            "image_name": "synpic29265.jpg",
            "image_organ": "CHEST",
            "question": "How many ribs are fractured?",
            "question_type": "COUNT",
            "answer": 2,
            "answer_type": "OPEN",
        },
        {
            "qid": 2,
            "phrase_type": "test_para",
            "image_name": "synpic29265.jpg",
            "image_organ": "CHEST",
            "question": "Is there a pneumothorax?",
            "question_type": "PRES",
            "answer": "No",
            "answer_type": "CLOSED ",
        },  # the release has stray spaces in some fields
        {
            "qid": 3,
            "phrase_type": "test_freeform",
            "image_name": "synpic100.jpg",
            "image_organ": "ABD",
            "question": "Where is the mass?",
            "question_type": "POS",
            "answer": "right kidney",
            "answer_type": "OPEN",
        },
    ]
    return _write_json(root / "VQA_RAD Dataset Public.json", [common | r for r in rows])


def _slake(root: Path) -> Path:
    """SLAKE 1.0: test.json with English and Chinese questions, images under imgs/<case>/source.jpg."""
    _png(root / "imgs" / "xmlab102" / "source.jpg")
    base = {
        "img_id": 102,
        "img_name": "xmlab102/source.jpg",
        "location": "Lung",
        "modality": "CT",
        "base_type": "vqa",
        "triple": ["vhead", "_", "_"],
    }
    rows = [
        base
        | {
            "qid": 11934,
            "question": "Does the picture contain lung?",
            "answer": "Yes",
            "q_lang": "en",
            "answer_type": "CLOSED",
            "content_type": "Organ",
        },
        base
        | {
            "qid": 11935,
            "question": "Which lung is abnormal, left or right?",
            "answer": "Left",
            "q_lang": "en",
            "answer_type": "CLOSED",
            "content_type": "Position",
        },
        base
        | {
            "qid": 11936,
            "question": "图片中包含肺吗？",
            "answer": "是",
            "q_lang": "zh",
            "answer_type": "CLOSED",
            "content_type": "Organ",
        },
    ]
    return _write_json(root / "test.json", rows)


def _llava_med_vqa(root: Path, name: str = "test.json") -> Path:
    """LLaVA-Med's converted test.json (also used by BioMed-VITAL): LLaVA conversations + answer_type."""
    _png(root / "images" / "test_0001.jpg")
    _png(root / "images" / "test_0002.jpg")
    rows = [
        {
            "id": "test_0001_q0",
            "image": "test_0001.jpg",
            "answer_type": "CLOSED",
            "conversations": [
                {"from": "human", "value": "<image>\nIs this tissue necrotic?"},
                {"from": "gpt", "value": "yes"},
            ],
        },
        # LLaVA-Med's own files sometimes misspell the key; their scripts accept it
        {
            "id": "test_0002_q0",
            "image": "test_0002.jpg",
            "answer_type": "OPEN",
            "conversatons": [
                {"from": "human", "value": "What is present?<image>"},
                {"from": "gpt", "value": "granulation tissue"},
            ],
        },
    ]
    return _write_json(root / name, rows)


def _pathvqa_pkl(root: Path) -> Path:
    """Original PathVQA release: pvqa/qas/test/test_qa.pkl, images in pvqa/images/test/<image>.jpg."""
    _png(root / "pvqa" / "images" / "test" / "test_0001.jpg")
    rows = [
        {"image": "test_0001", "question": "Does this image show necrosis?", "answer": "yes"},
        {"image": "test_0001", "question": "What does this image show?", "answer": "caseous necrosis"},
    ]
    path = root / "pvqa" / "qas" / "test" / "test_qa.pkl"
    path.parent.mkdir(parents=True)
    path.write_bytes(pickle.dumps(rows))
    return path


def _qa50(root: Path) -> Path:
    """LLaVA-Med's open visual chat questions: llava_med_eval_qa50_qa.jsonl, images/ beside it."""
    _png(root / "images" / "34630837_F3.jpg")
    flags = {"chest_xray": False, "mri": False, "histology": False, "gross": False, "ct_scan": True}
    rows = [
        {
            "question_id": "34630837_F3_q0",
            "image": "34630837_F3.jpg",
            "domain": flags,
            "type": "conversation",
            "fig_label": "Figure 3",
            "fig_caption": "Axial CT ...",
            "in_text_mention": "...",
            "text": "What does the CT show?",
            "gpt4_answer": "A hypodense lesion in the liver.",
        },
        {
            "question_id": "34630837_F3_q1",
            "image": "34630837_F3.jpg",
            "domain": flags,
            "type": "detailed",
            "text": "Describe the image in detail.",
            "gpt4_answer": "An axial CT of the abdomen ...",
        },
    ]
    return _write_jsonl(root / "llava_med_eval_qa50_qa.jsonl", rows)


def _demo(root: Path) -> Path:
    _png(root / "images" / "vqa_0000.png")
    rows = [
        {
            "question_id": "vqa_0000_q0",
            "image": "images/vqa_0000.png",
            "question": "Is there a lesion?",
            "answer": "yes",
            "answer_type": "CLOSED",
            "domain": "ct_scan",
        },
        {
            "question_id": "vqa_0000_q1",
            "image": "images/vqa_0000.png",
            "question": "Which side is the lesion on?",
            "answer": "left",
            "answer_type": "OPEN",
            "domain": "ct_scan",
            "kind": "side",
        },
    ]
    return _write_jsonl(root / "questions.jsonl", rows)


# ------------------------------------------------------------------ one test per format
def test_every_param_format_has_a_loader():
    formats = typing.get_args(EvalSet.model_fields["format"].annotation)
    assert set(formats) == set(LOADERS)


def test_vqa_rad_osf_release_keeps_the_test_split(tmp_path):
    path = _vqa_rad(tmp_path)
    s = load_set("vqa_rad", "vqa_rad", path)
    assert [i.question_id for i in s.items] == ["1", "2", "3"]
    assert s.filtered == {"not_test_split": 1}
    first = s.items[0]
    assert first.answer == "2" and first.answer_type == "OPEN" and first.organ == "chest"
    assert first.question_type == "count"
    assert first.image_path == tmp_path / "VQA_RAD Image Folder" / "synpic29265.jpg"
    assert s.items[1].answer_type == "CLOSED"  # "CLOSED " with a stray space
    everything = load_set("vqa_rad", "vqa_rad", path, options=SetOptions(split="all"))
    assert len(everything.items) == 4 and not everything.filtered


def test_slake_keeps_english_questions(tmp_path):
    s = load_set("slake", "slake", _slake(tmp_path))
    assert [i.question_id for i in s.items] == ["11934", "11935"]
    assert s.filtered == {"not_english": 1}
    item = s.items[1]
    assert (item.answer, item.answer_type, item.domain, item.organ) == ("Left", "CLOSED", "ct", "lung")
    assert item.image_path == tmp_path / "imgs" / "xmlab102" / "source.jpg"


def test_llava_med_converted_test_json(tmp_path):
    s = load_set("pvqa", "llava_med_vqa", _llava_med_vqa(tmp_path))
    a, b = s.items
    assert (a.question, a.answer, a.answer_type) == ("Is this tissue necrotic?", "yes", "CLOSED")
    assert (b.question, b.answer, b.answer_type) == ("What is present?", "granulation tissue", "OPEN")
    assert not s.skipped


def test_pathvqa_from_the_pickled_release(tmp_path):
    s = load_set("pathvqa", "pathvqa", _pathvqa_pkl(tmp_path))
    assert [i.answer_type for i in s.items] == ["CLOSED", "OPEN"]
    assert s.items[0].image_path == tmp_path / "pvqa" / "images" / "test" / "test_0001.jpg"
    assert {i.domain for i in s.items} == {"histology"}
    assert len({i.question_id for i in s.items}) == 2


def test_pathvqa_from_llava_med_json(tmp_path):
    s = load_set("pathvqa", "pathvqa", _llava_med_vqa(tmp_path))
    assert [i.answer_type for i in s.items] == ["CLOSED", "OPEN"]


def test_pathvqa_pickle_must_be_plain_data(tmp_path):
    path = tmp_path / "pvqa" / "qas" / "test" / "test_qa.pkl"
    _png(tmp_path / "pvqa" / "images" / "test" / "x.jpg")
    path.parent.mkdir(parents=True)
    path.write_bytes(pickle.dumps([collections.OrderedDict(image="x", question="q", answer="yes")]))
    with pytest.raises(VQAFormatError, match=r"test_qa\.pkl: not a plain-data pickle"):
        load_set("pathvqa", "pathvqa", path)


def test_llava_med_qa50_questions(tmp_path):
    s = load_set("qa50", "llava_med_qa", _qa50(tmp_path))
    a, b = s.items
    assert a.question == "What does the CT show?" and a.answer.startswith("A hypodense lesion")
    assert (a.answer_type, a.domain, a.question_type) == ("OPEN", "ct_scan", "conversation")
    assert a.extra["fig_caption"] == "Axial CT ..." and b.question_type == "detailed"


def test_demo_set_and_limit(tmp_path):
    path = _demo(tmp_path)
    s = load_set("demo", "demo", path)
    assert [i.answer_type for i in s.items] == ["CLOSED", "OPEN"]
    assert s.items[0].image_path == tmp_path / "images" / "vqa_0000.png" and s.items[0].domain == "ct_scan"
    assert (s.items[0].question_type, s.items[1].question_type) == (None, "side")
    assert len(load_set("demo", "demo", path, options=SetOptions(limit=1)).items) == 1


# ------------------------------------------------------------------ errors name the file and the record
def test_missing_file_and_image_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"question file not found: .*nope\.json"):
        load_set("s", "slake", tmp_path / "nope.json")
    _write_json(tmp_path / "test.json", [])
    with pytest.raises(FileNotFoundError, match=r"image folder not found: .*imgs"):
        load_set("s", "slake", tmp_path / "test.json")


def test_malformed_files(tmp_path):
    (tmp_path / "imgs").mkdir()
    bad = tmp_path / "test.json"
    bad.write_text("[{", encoding="utf-8")
    with pytest.raises(VQAFormatError, match=r"test\.json: not valid JSON"):
        load_set("s", "slake", bad)
    _write_json(bad, {"questions": []})
    with pytest.raises(VQAFormatError, match=r"test\.json: expected a JSON list of questions, got dict"):
        load_set("s", "slake", bad)
    _write_json(bad, [])
    with pytest.raises(VQAFormatError, match=r"set 's': no usable questions"):
        load_set("s", "slake", bad)
    demo = tmp_path / "q.jsonl"
    demo.write_text('{"question_id": 1}\nnot json\n', encoding="utf-8")
    with pytest.raises(VQAFormatError, match=r"q\.jsonl:2: not valid JSON"):
        load_set("d", "demo", demo)


def test_unknown_format(tmp_path):
    with pytest.raises(VQAFormatError, match=r"unknown format 'vqa2'.*known: demo"):
        load_set("s", "vqa2", tmp_path / "x.json")


def test_bad_records_are_skipped_and_listed(tmp_path):
    path = _demo(tmp_path)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows += [dict(rows[0], question_id=f"ok{i}") for i in range(20)]
    rows.append({k: v for k, v in rows[0].items() if k != "answer"} | {"question_id": "no_answer"})
    rows.append(dict(rows[0], question_id="no_image", image="images/missing.png"))
    rows.append(dict(rows[0]))  # duplicate id
    rows.append(dict(rows[0], question_id="bad_kind", answer_type="MULTI"))
    _write_jsonl(path, rows)
    s = load_set("demo", "demo", path, options=SetOptions(max_invalid_fraction=0.5))
    assert len(s.items) == 22
    assert len(s.skipped) == 4
    assert s.skipped[0].endswith("questions.jsonl#23: missing field 'answer'")
    assert "#24: image not found" in s.skipped[1] and "missing.png" in s.skipped[1]
    assert s.skipped[2].endswith("#25: duplicate question id 'vqa_0000_q0'")
    assert "#26: answer_type 'MULTI' is neither CLOSED nor OPEN" in s.skipped[3]
    report = s.report()
    assert report["dropped"] == 4 and report["n_closed"] == 21 and report["n_open"] == 1

    with pytest.raises(VQAFormatError, match=r"4 of 26 records .* are invalid"):
        load_set("demo", "demo", path, options=SetOptions(max_invalid_fraction=0.1))


def test_wrong_format_for_the_file_fails_loudly(tmp_path):
    path = _slake(tmp_path)
    (tmp_path / "images").mkdir()
    with pytest.raises(
        VQAFormatError, match=r"no usable questions .*\(format 'llava_med_vqa'\).*missing field"
    ):
        load_set("slake", "llava_med_vqa", path)


# ------------------------------------------------------------------ hardening
def test_qa50_question_text_loses_its_image_placeholder(tmp_path):
    # LLaVA-Med's llava_med_eval_qa50_qa.jsonl writes "<image>\n..." in `text`; kept, the prompt would
    # carry one more <image> token than images and transformers refuses the batch
    path = _qa50(tmp_path)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows[0]["text"] = "<image>\nWhat does the CT show?"
    rows[1]["text"] = "Describe the image in detail. <image>"
    _write_jsonl(path, rows)
    a, b = load_set("qa50", "llava_med_qa", path).items
    assert a.question == "What does the CT show?"
    assert b.question == "Describe the image in detail."


def test_yes_no_answers_with_more_words_are_closed(tmp_path):
    _png(tmp_path / "pvqa" / "images" / "test" / "t1.jpg")
    rows = [
        {"image": "t1", "question": "Is this necrosis?", "answer": "yes, it is"},
        {"image": "t1", "question": "Is there fibrosis?", "answer": "No."},
        {"image": "t1", "question": "What is seen?", "answer": "no evidence of tumour"},
    ]
    path = tmp_path / "pvqa" / "qas" / "test" / "test_qa.pkl"
    path.parent.mkdir(parents=True)
    path.write_bytes(pickle.dumps(rows))
    s = load_set("pathvqa", "pathvqa", path)
    assert [i.answer_type for i in s.items] == ["CLOSED", "CLOSED", "OPEN"]


def test_no_usable_questions_tells_what_the_split_left_out(tmp_path):
    path = _vqa_rad(tmp_path)
    rows = json.loads(path.read_text())
    _write_json(path, [dict(r, phrase_type="freeform") for r in rows])  # train questions only
    with pytest.raises(VQAFormatError) as e:
        load_set("vqa_rad", "vqa_rad", path)
    msg = str(e.value)
    assert "no usable questions" in msg and "4 not_test_split" in msg and "split" in msg


@pytest.mark.parametrize("content", [b"", b"\x89PNG\r\n\x1a\n truncated", b"GIF89a garbage"])
def test_empty_or_corrupt_image_is_skipped_with_its_path(tmp_path, content):
    path = _demo(tmp_path)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    _png(tmp_path / "images" / "bad.png")
    (tmp_path / "images" / "bad.png").write_bytes(content)
    rows += [dict(rows[0], question_id=f"ok{i}") for i in range(30)]
    rows.append(dict(rows[0], question_id="bad", image="images/bad.png"))
    _write_jsonl(path, rows)
    s = load_set("demo", "demo", path)
    assert len(s.items) == 32 and len(s.skipped) == 1
    assert "#33: image file is" in s.skipped[0] and str(tmp_path / "images" / "bad.png") in s.skipped[0]


@pytest.mark.parametrize("reference", ["[]", "-", "?", "...", []])
def test_a_reference_that_normalises_to_nothing_is_dropped_with_its_reason(tmp_path, reference):
    path = _demo(tmp_path)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows += [dict(rows[0], question_id=f"ok{i}") for i in range(20)]
    rows.append(dict(rows[0], question_id="empty_ref", answer=reference, answer_type="CLOSED"))
    _write_jsonl(path, rows)
    s = load_set("demo", "demo", path, options=SetOptions(max_invalid_fraction=0.5))
    assert "empty_ref" not in {i.question_id for i in s.items}
    assert len(s.skipped) == 1
    assert "#23:" in s.skipped[0] and (
        "normalises to nothing" in s.skipped[0] or "list of texts" in s.skipped[0]
    )


def test_a_list_answer_is_read_as_its_texts(tmp_path):
    path = _demo(tmp_path)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows.append(dict(rows[0], question_id="one", answer=["Left"], answer_type="CLOSED"))
    rows.append(dict(rows[0], question_id="two", answer=["liver", "kidney"], answer_type="OPEN"))
    rows.append(dict(rows[0], question_id="nested", answer=[{"a": 1}], answer_type="OPEN"))
    _write_jsonl(path, rows)
    s = load_set("demo", "demo", path, options=SetOptions(max_invalid_fraction=0.5))
    answers = {i.question_id: i.answer for i in s.items}
    assert answers["one"] == "Left" and answers["two"] == "liver, kidney"
    assert "nested" not in answers and any("not a list of texts" in x for x in s.skipped)
