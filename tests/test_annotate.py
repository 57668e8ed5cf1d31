"""The clinician annotation tool: tasks, the label file it appends to, its HTTP API, and the page in Chromium."""

from __future__ import annotations

import json
import os
import shutil
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from vital import labels
from vital.annotate import AnnotationError, AnnotationSession, load_tasks, make_server
from vital.io import read_jsonl, write_jsonl
from vital.params import LabelsParams
from vital.paths import Paths

CAPTIONS = {
    "PMC1_F1": "Axial CT showing a small lesion in the left half.",
    "PMC2_F1": "Chest X-ray, no lesion.",
}


@pytest.fixture
def paths(tmp_path) -> Paths:
    paths = Paths(tmp_path)
    figures = []
    for i, (pid, caption) in enumerate([*CAPTIONS.items(), ("PMC3_F1", "A figure with one candidate.")]):
        image = f"images/ct/{pid}.png"
        (paths.corpus / "images" / "ct").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (32, 32), (40 * i, 80, 120)).save(paths.corpus / image)
        figures.append({"pair_id": pid, "pmid": str(100 + i), "fig_caption": caption, "image": image})
    write_jsonl(paths.sample, figures)
    cands = []
    for pid, n in (("PMC1_F1", 4), ("PMC2_F1", 3), ("PMC3_F1", 1)):
        for k in range(n):
            turns = [
                {"from": "human", "value": "<image>\nWhere is the lesion?"},
                {"from": "gpt", "value": f"Answer {k} about {pid}."},
            ]
            image = f"images/ct/{pid}.png"
            cands.append(
                {
                    "id": f"{pid}#{k}",
                    "pair_id": pid,
                    "image": image,
                    "domain": "ct_scan",
                    "conversations": turns,
                }
            )
    write_jsonl(paths.candidates, cands)
    return paths


def test_tasks_are_figures_with_two_candidates_in_a_stable_per_annotator_order(paths):
    tasks = load_tasks(paths, "dr_a")
    assert [t.pair_id for t in tasks] == ["PMC1_F1", "PMC2_F1"]  # PMC3 has a single candidate
    assert sorted(c.id for c in tasks[0].candidates) == [f"PMC1_F1#{k}" for k in range(4)]
    again = [[c.id for c in t.candidates] for t in load_tasks(paths, "dr_a")]
    assert again == [[c.id for c in t.candidates] for t in tasks]
    others = {tuple(c.id for c in load_tasks(paths, f"dr_{n}")[0].candidates) for n in range(8)}
    assert len(others) > 1  # clinicians do not all see the same order
    assert [t.pair_id for t in load_tasks(paths, "dr_a", limit=1)] == ["PMC1_F1"]


def test_missing_inputs_and_bad_annotator_fail_naming_what_to_fix(paths):
    with paths.candidates.open("a") as f:
        f.write(json.dumps({"id": "PMC1_F1#9", "pair_id": "PMC1_F1"}) + "\n")
    with pytest.raises(AnnotationError, match=r"candidates.jsonl:9: invalid candidate"):
        load_tasks(paths, "dr_a")
    os.remove(paths.candidates)
    with pytest.raises(AnnotationError, match=r"candidates.jsonl: not found \(run the generate stage"):
        load_tasks(paths, "dr_a")
    with pytest.raises(AnnotationError, match="annotator '../x'"):
        AnnotationSession(paths, "../x", [])


def _serve(session):
    server = make_server(session, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    host, port = server.server_address[:2]
    return server, f"http://{host}:{port}"


def _call(url, body=None, headers=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        url, data=data, headers={"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(req) as res:
            return res.status, res.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_api_validates_rankings_appends_them_and_resumes(paths):
    session = AnnotationSession(paths, "dr_a", load_tasks(paths, "dr_a"))
    server, url = _serve(session)
    try:
        status, body = _call(f"{url}/api/task")
        task = json.loads(body)["task"]
        assert status == 200 and task["pair_id"] == "PMC1_F1" and task["caption"] == CAPTIONS["PMC1_F1"]
        assert task["candidates"][0]["turns"][0] == {"from": "human", "value": "Where is the lesion?"}
        status, img = _call(url + task["image"])
        assert status == 200 and img.startswith(b"\x89PNG")
        assert _call(f"{url}/image/PMC9_F9")[0] == 404

        ids = [c["id"] for c in task["candidates"]]
        bad = {
            "unknown_candidate": [*ids[:3], "PMC1_F1#7"],
            "wrong_figure": [*ids[:3], "PMC2_F1#0"],
            "duplicate_candidate": [ids[0], *ids],
            "rank every candidate": ids[:3],
        }
        status, body = _call(
            f"{url}/api/label", {"pair_id": "PMC1_F1", "ranking": ids, "ties": [[ids[0], ids[2]]]}
        )
        assert status == 400 and "must be neighbours" in json.loads(body)["error"]
        status, body = _call(f"{url}/api/label", {"pair_id": "PMC9_F9", "ranking": ids})
        assert status == 404 and "PMC9_F9" in json.loads(body)["error"]
        # a page on another site, or a form post, cannot write labels
        for headers in ({"Origin": "http://evil.example"}, {"Content-Type": "text/plain"}):
            status, _ = _call(f"{url}/api/label", {"pair_id": "PMC1_F1", "ranking": ids}, headers)
            assert status == 415
        for reason, ranking in bad.items():
            status, body = _call(f"{url}/api/label", {"pair_id": "PMC1_F1", "ranking": ranking})
            assert (
                status == 400
                and reason in json.loads(body)["error"]
                and "PMC1_F1" in json.loads(body)["error"]
            )
        assert not session.label_file.exists()  # nothing half-written

        status, body = _call(f"{url}/api/label", {"pair_id": "PMC1_F1", "ranking": ids, "ties": [ids[2:4]]})
        assert status == 200 and json.loads(body)["progress"] == {"ranked": 1, "total": 2, "skipped": 0}
        status, body = _call(f"{url}/api/label", {"pair_id": "PMC1_F1", "ranking": ids})
        assert status == 409 and "already ranked" in json.loads(body)["error"]
    finally:
        server.shutdown()

    lines = list(read_jsonl(paths.labels_dir / "dr_a.jsonl"))
    digests = {c.id: c.digest() for c in session.tasks["PMC1_F1"].candidates}
    assert lines == [
        {
            "pair_id": "PMC1_F1",
            "annotator": "dr_a",
            "ranking": ids,
            "ties": [ids[2:4]],
            "source": "files",
            "seen": digests,
        }
    ]
    # a restarted session offers the next figure, and the labels stage takes the file as it is
    restarted = AnnotationSession(paths, "dr_a", load_tasks(paths, "dr_a"))
    assert restarted.next_task().pair_id == "PMC2_F1"
    result = labels.run(LabelsParams(backend="files"), paths)
    assert result["labels"] == 1 and result["human_pairs"] == 6 and result["skipped"] == 0


def test_a_regenerated_candidate_makes_its_ranking_stale_not_silently_wrong(paths):
    session = AnnotationSession(paths, "dr_a", load_tasks(paths, "dr_a"))
    for pid in ("PMC1_F1", "PMC2_F1"):
        session.submit({"pair_id": pid, "ranking": [c.id for c in session.tasks[pid].candidates]})
    # generate reruns (new prompt, new model) and PMC1_F1#2 now holds other text under the same id
    cands = list(read_jsonl(paths.candidates))
    cands[2]["conversations"][1]["value"] = "A different answer."
    write_jsonl(paths.candidates, cands)
    result = labels.run(LabelsParams(backend="files"), paths)
    assert result["labels"] == 1 and result["skipped_by_reason"] == {"candidate_changed": 1}
    problem = result["problems"][0]
    assert problem["where"].endswith("dr_a.jsonl:1") and "PMC1_F1#2" in problem["detail"]
    # the clinician is offered the figure again, and the new ranking is the one the stage uses
    again = AnnotationSession(paths, "dr_a", load_tasks(paths, "dr_a"))
    assert again.next_task().pair_id == "PMC1_F1"
    again.submit({"pair_id": "PMC1_F1", "ranking": [c.id for c in again.tasks["PMC1_F1"].candidates]})
    assert again.next_task() is None
    result = labels.run(LabelsParams(backend="files"), paths)
    assert result["labels"] == 2 and result["skipped_by_reason"] == {"candidate_changed": 1}


def test_appends_safely_to_a_hand_edited_file_and_beside_a_second_session(paths):
    first = AnnotationSession(paths, "dr_a", load_tasks(paths, "dr_a"))
    second = AnnotationSession(paths, "dr_a", load_tasks(paths, "dr_a"))  # started before any label
    paths.labels_dir.mkdir(parents=True)
    hand = {"pair_id": "PMC3_F1", "annotator": "dr_a", "ranking": ["x", "y"]}
    (paths.labels_dir / "dr_a.jsonl").write_text(json.dumps(hand))  # no final newline
    ids = [c.id for c in first.tasks["PMC1_F1"].candidates]
    first.submit({"pair_id": "PMC1_F1", "ranking": ids})
    with pytest.raises(AnnotationError, match="PMC1_F1: already ranked") as err:
        second.submit({"pair_id": "PMC1_F1", "ranking": ids[::-1]})
    assert err.value.status == 409 and second.next_task().pair_id == "PMC2_F1"
    lines = list(read_jsonl(paths.labels_dir / "dr_a.jsonl"))
    assert [line["pair_id"] for line in lines] == ["PMC3_F1", "PMC1_F1"] and lines[1]["ranking"] == ids


def test_an_image_outside_the_corpus_is_not_served_and_limit_must_be_positive(paths):
    rows = list(read_jsonl(paths.sample))
    rows[0]["image"] = "../../secret.png"
    write_jsonl(paths.sample, rows)
    session = AnnotationSession(paths, "dr_a", load_tasks(paths, "dr_a"))
    server, url = _serve(session)
    try:
        status, body = _call(f"{url}/image/PMC1_F1")
        assert status == 404 and "leaves the corpus folder" in json.loads(body)["error"]
    finally:
        server.shutdown()
    with pytest.raises(AnnotationError, match="limit=0"):
        load_tasks(paths, "dr_a", limit=0)


def _chromium() -> str | None:
    return os.environ.get("VITAL_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None, reason="needs Debian's chromium (apt-get install chromium)")
def test_a_clinician_ranks_in_the_browser(paths, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    session = AnnotationSession(paths, "dr_b", load_tasks(paths, "dr_b"))
    server, url = _serve(session)
    try:
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
            page = browser.new_page()
            page.goto(url)
            page.wait_for_selector("#caption")
            assert page.inner_text("#caption") == CAPTIONS["PMC1_F1"]
            page.wait_for_function("document.querySelector('#figure-image').naturalWidth > 0")
            assert "0 of 2 figures ranked" in page.inner_text("#progress")

            clicks = [3, 1, 4, 2]  # by position on the page
            shown = [page.get_attribute(f"[data-testid=candidate-{n}]", "data-id") for n in (1, 2, 3, 4)]
            for n in clicks[:3]:
                page.click(f"[data-testid=candidate-{n}]")
            assert page.is_disabled("#submit")  # every candidate must be ranked
            page.keyboard.press("2")  # keys pick by position too
            page.check("[data-testid=tie-2]")  # candidate 2, ranked last, as good as the one above
            page.screenshot(path=str(tmp_path / "annotate.png"), full_page=True)
            page.locator("#caption").click()  # focus off the checkbox, so Enter saves
            page.keyboard.press("Enter")
            page.keyboard.press("Enter")  # a second Enter must not save twice
            second_figure = (
                f"document.querySelector('#caption')?.textContent === {json.dumps(CAPTIONS['PMC2_F1'])}"
            )
            page.wait_for_function(second_figure)
            assert "1 of 2 figures ranked" in page.inner_text("#progress")

            page.click("#skip")
            page.wait_for_selector("#done")
            assert "1 skipped" in page.inner_text("#done")  # skipped is not "ranked"
            page.click("#revisit")
            page.wait_for_function(second_figure)
            browser.close()
    finally:
        server.shutdown()

    ranking = [shown[n - 1] for n in clicks]
    (line,) = read_jsonl(paths.labels_dir / "dr_b.jsonl")
    assert line["ranking"] == ranking and line["ties"] == [ranking[2:4]]
    assert Path(tmp_path / "annotate.png").stat().st_size > 0
