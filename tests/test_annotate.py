"""The clinician annotation tool: tasks, the label file it appends to, its HTTP API, and the page in Chromium."""

from __future__ import annotations

import json
import os
import shutil
import threading
import urllib.error
import urllib.request

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
            assert status == (403 if "Origin" in headers else 415)
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
    exe = os.environ.get("VITAL_CHROMIUM")
    if exe:
        return exe if os.access(exe, os.X_OK) else None
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _browser_or_skip():
    """Playwright's sync API and a Chromium binary; without them the browser tests skip, except in CI
    (``CI=true``), where a missing browser is a failure: .ci/run installs Debian's chromium."""
    why = None
    try:
        from playwright import sync_api
    except ImportError:
        sync_api, why = None, "needs playwright (pip install -e '.[dev]')"
    if _chromium() is None:
        why = (
            "needs Debian's chromium (apt-get install -y chromium) or VITAL_CHROMIUM="
            f"{os.environ.get('VITAL_CHROMIUM', '')!r} naming a Chromium binary"
        )
    if why:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and the browser test cannot run: {why}")
        pytest.skip(why)
    return sync_api


def _wait_for_text(sync_api, page, selector: str, text: str) -> None:
    # not page.wait_for_function: its string predicate is an eval, which the page's CSP refuses
    sync_api.expect(page.locator(selector)).to_have_text(text)


def test_a_clinician_ranks_in_the_browser(paths, tmp_path):
    """Rank with clicks, keys and a tie; Enter in the tie box saves; reopen and correct the ranking; the
    page under its own CSP, at 420 px wide and at desktop width (screenshots kept in tmp_path)."""
    sync_api = _browser_or_skip()
    session = AnnotationSession(paths, "dr_b", load_tasks(paths, "dr_b"))
    server, url = _serve(session)
    complaints = []
    try:
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on(
                "console",
                lambda m: complaints.append(f"{m.text} {m.location}") if m.type in ("error", "warning") else None,
            )
            page.on("pageerror", lambda e: complaints.append(str(e)))
            page.goto(url)
            page.wait_for_selector("#caption")
            assert page.inner_text("#caption") == CAPTIONS["PMC1_F1"]
            page.wait_for_function("() => document.querySelector('#figure-image').naturalWidth > 0")
            assert "0 of 2 figures ranked" in page.inner_text("#progress")

            clicks = [3, 1, 4, 2]  # by position on the page
            shown = [page.get_attribute(f"[data-testid=candidate-{n}]", "data-id") for n in (1, 2, 3, 4)]
            for n in clicks[:3]:
                page.click(f"[data-testid=candidate-{n}]")
            assert page.is_disabled("#submit")  # every candidate must be ranked
            page.keyboard.press("2")  # keys pick by position too
            page.check("[data-testid=tie-2]")  # candidate 2, ranked last, as good as the one above
            page.screenshot(path=str(tmp_path / "annotate-1280.png"), full_page=True)
            assert page.evaluate("document.activeElement.dataset.testid") == "tie-2"
            page.keyboard.press("Enter")  # the tie box has the focus: Enter saves all the same
            page.keyboard.press("Enter")  # a second Enter must not save twice
            _wait_for_text(sync_api, page, "#caption", CAPTIONS["PMC2_F1"])
            assert "1 of 2 figures ranked" in page.inner_text("#progress")

            # 420 px wide: one column, nothing wider than the screen
            page.set_viewport_size({"width": 420, "height": 900})
            page.screenshot(path=str(tmp_path / "annotate-420.png"), full_page=True)
            assert page.evaluate("document.documentElement.scrollWidth") <= 420
            box = page.locator("[data-testid=candidate-1]").bounding_box()
            assert box["x"] >= 0 and box["x"] + box["width"] <= 420
            assert page.locator("#figure-image").bounding_box()["width"] <= 420

            # reopen the saved ranking, change it, save the correction
            page.click("#saved-rankings")
            page.click("[data-testid=reopen-PMC1_F1]")
            page.wait_for_selector("#correcting")
            assert page.inner_text("#caption") == CAPTIONS["PMC1_F1"]
            ranks = [page.inner_text(f"[data-testid=candidate-{n}] .rank") for n in (1, 2, 3, 4)]
            assert ranks == ["2", "4", "1", "3"] and page.is_checked("[data-testid=tie-2]")  # as saved
            page.screenshot(path=str(tmp_path / "annotate-correct-420.png"), full_page=True)
            page.click("#clear")
            corrected = [1, 2, 3, 4]
            for n in corrected:
                page.click(f"[data-testid=candidate-{n}]")
            page.click("#submit")
            _wait_for_text(sync_api, page, "#caption", CAPTIONS["PMC2_F1"])
            assert "1 of 2 figures ranked" in page.inner_text("#progress")  # a correction, not a new one

            page.set_viewport_size({"width": 1280, "height": 900})
            page.click("#skip")
            page.wait_for_selector("#done")
            assert "1 skipped" in page.inner_text("#done")  # skipped is not "ranked"
            page.click("#revisit")
            _wait_for_text(sync_api, page, "#caption", CAPTIONS["PMC2_F1"])
            browser.close()
    finally:
        server.shutdown()

    assert complaints == []  # no script error, no Content-Security-Policy refusal
    ranking = [shown[n - 1] for n in clicks]
    first, correction = read_jsonl(paths.labels_dir / "dr_b.jsonl")  # appended, nothing rewritten
    assert first["ranking"] == ranking and first["ties"] == [ranking[2:4]]
    assert correction["ranking"] == shown and correction["ties"] == []
    result = labels.run(LabelsParams(backend="files"), paths)
    (pref,) = read_jsonl(paths.labels)
    assert result["labels"] == 1 and pref["ranking"] == shown  # the correction supersedes
    assert result["superseded"]["count"] == 1 and result["superseded"]["where"][0].endswith("dr_b.jsonl:1")
    for name in ("annotate-1280.png", "annotate-420.png", "annotate-correct-420.png"):
        assert (tmp_path / name).stat().st_size > 0


def test_a_figure_ranked_in_another_tab_moves_the_page_on(paths):
    """Two tabs on the same figure: the second save is refused (409), and that tab moves to the next
    figure with the counter refreshed instead of keeping a ranking it can never save."""
    sync_api = _browser_or_skip()
    session = AnnotationSession(paths, "dr_c", load_tasks(paths, "dr_c"))
    server, url = _serve(session)
    try:
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
            tabs = [browser.new_page(), browser.new_page()]
            for tab in tabs:
                tab.goto(url)
                tab.wait_for_selector("#caption")
                for n in (1, 2, 3, 4):
                    tab.click(f"[data-testid=candidate-{n}]")
            tabs[0].click("#submit")
            _wait_for_text(sync_api, tabs[0], "#caption", CAPTIONS["PMC2_F1"])
            assert "0 of 2 figures ranked" in tabs[1].inner_text("#progress")  # not yet told
            tabs[1].click("#submit")
            _wait_for_text(sync_api, tabs[1], "#caption", CAPTIONS["PMC2_F1"])
            assert "1 of 2 figures ranked" in tabs[1].inner_text("#progress")
            assert "already ranked" in tabs[1].inner_text("#notice")
            assert tabs[1].is_enabled("#skip") and tabs[1].is_disabled("#submit")
            browser.close()
    finally:
        server.shutdown()
    assert len(list(read_jsonl(paths.labels_dir / "dr_c.jsonl"))) == 1
