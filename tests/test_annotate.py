"""The clinician annotation tool: tasks, the label file it appends to, its HTTP API, and the page in Chromium."""

from __future__ import annotations

import io
import json
import os
import queue
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from PIL import Image

from vital import cli, labels
from vital.annotate import AnnotationError, AnnotationSession, load_tasks, make_server
from vital.io import read_jsonl, write_jsonl
from vital.params import LabelsParams
from vital.paths import Paths

REPO = Path(__file__).resolve().parents[1]
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
    with pytest.raises(AnnotationError, match=r"candidates.jsonl:9: bad_line"):
        load_tasks(paths, "dr_a")
    os.remove(paths.candidates)
    with pytest.raises(AnnotationError, match=r"candidates.jsonl: not found \(run the generate stage"):
        load_tasks(paths, "dr_a")
    with pytest.raises(AnnotationError, match="annotator '../x'"):
        AnnotationSession(paths, "../x", [])


def _serve(session, **kwargs):
    server = make_server(session, port=0, **kwargs)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    host, port = server.server_address[:2]
    return server, f"http://{host}:{port}"


def _call(url, body=None, headers=None, with_headers=False):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        url, data=data, headers={"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(req) as res:
            reply = res.status, res.read(), res.headers
    except urllib.error.HTTPError as e:
        reply = e.code, e.read(), e.headers
    return reply if with_headers else reply[:2]


def _raw(url: str, data: bytes, shut_write: bool = False, wait: float = 5.0) -> tuple[int, dict]:
    """Send bytes as they are; the reply's status and JSON body (a server that never answers fails)."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=wait) as conn:
        conn.sendall(data)
        if shut_write:
            conn.shutdown(socket.SHUT_WR)  # the client has sent all it will send
        reply = b""
        while chunk := conn.recv(65536):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head, "the server closed the connection without a reply"
    return int(head.split()[1]), json.loads(body)


def _ids(session, pair_id="PMC1_F1") -> list[str]:
    return [c.id for c in session.tasks[pair_id].candidates]


def _cli(args: list[str], cwd: Path) -> tuple[subprocess.Popen, str]:
    """Start `vital annotate` in a subprocess; returns it and the stdout line that gives the address."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "vital.cli", "annotate", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            if proc.poll() is not None:
                break
            continue
        if "open http" in line:
            return proc, line
    proc.kill()
    raise AssertionError(f"vital annotate printed no address: {proc.stderr.read()}")


def _stop(proc: subprocess.Popen) -> str:
    """Stop the command; its stderr."""
    proc.terminate()
    proc.wait(timeout=10)
    return proc.stderr.read()


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
    assert result["labels"] == 1 and result["human_pairs"] == 6 and result["dropped"] == 0


def test_a_regenerated_candidate_makes_its_ranking_stale_not_silently_wrong(paths):
    session = AnnotationSession(paths, "dr_a", load_tasks(paths, "dr_a"))
    for pid in ("PMC1_F1", "PMC2_F1"):
        session.submit({"pair_id": pid, "ranking": [c.id for c in session.tasks[pid].candidates]})
    # generate reruns (new prompt, new model) and PMC1_F1#2 now holds other text under the same id
    cands = list(read_jsonl(paths.candidates))
    cands[2]["conversations"][1]["value"] = "A different answer."
    write_jsonl(paths.candidates, cands)
    result = labels.run(LabelsParams(backend="files"), paths)
    assert result["labels"] == 1 and result["dropped_by_reason"] == {"candidate_changed": 1}
    problem = result["dropped_examples"][0]
    assert problem["where"].endswith("dr_a.jsonl:1") and "PMC1_F1#2" in problem["detail"]
    # the clinician is offered the figure again, and the new ranking is the one the stage uses
    again = AnnotationSession(paths, "dr_a", load_tasks(paths, "dr_a"))
    assert again.next_task().pair_id == "PMC1_F1"
    again.submit({"pair_id": "PMC1_F1", "ranking": [c.id for c in again.tasks["PMC1_F1"].candidates]})
    assert again.next_task() is None
    result = labels.run(LabelsParams(backend="files"), paths)
    assert result["labels"] == 2 and result["dropped_by_reason"] == {"candidate_changed": 1}


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


def test_a_figure_in_a_fetched_shard_is_served_from_the_shard(paths):
    """With sample.corpus.shards, sampled images are shard refs (vital fetch-images): served as the member."""
    from vital.shards import ShardWriter, make_ref

    jpeg = io.BytesIO()
    Image.new("RGB", (16, 8), (200, 10, 10)).save(jpeg, "JPEG")
    writer = ShardWriter(paths.corpus / "shards" / "shard-00000.tar")
    writer.add("PMC1_F1", "jpg", jpeg.getvalue(), {"pair_id": "PMC1_F1"})
    writer.commit()
    rows = list(read_jsonl(paths.sample))
    rows[0]["image"] = make_ref("shards/shard-00000.tar", "PMC1_F1.jpg")
    rows[1]["image"] = make_ref("shards/shard-00000.tar", "PMC2_F1.jpg")  # not in the shard
    write_jsonl(paths.sample, rows)
    for p in (paths.corpus / "images" / "ct").iterdir():
        p.unlink()
    session = AnnotationSession(paths, "dr_a", load_tasks(paths, "dr_a"))
    server, url = _serve(session)
    try:
        status, body, headers = _call(f"{url}/image/PMC1_F1", with_headers=True)
        assert status == 200 and body == jpeg.getvalue() and headers["Content-Type"] == "image/jpeg"
        status, body = _call(f"{url}/image/PMC2_F1")
        assert status == 404 and "PMC2_F1.jpg" in json.loads(body)["error"]
    finally:
        server.shutdown()


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


def test_dns_rebinding_and_foreign_origins_are_refused_on_every_route(paths):
    """A page on rebind.test, its name pointed at 127.0.0.1, sends Host and Origin rebind.test:PORT: the two
    agree, but neither names this server. Only 127.0.0.1, localhost and the bound address are served."""
    session = AnnotationSession(paths, "dr_a", load_tasks(paths, "dr_a"))
    server, url = _serve(session)
    port = server.server_address[1]
    label = {"pair_id": "PMC1_F1", "ranking": _ids(session)}
    try:
        rebind = {"Host": f"rebind.test:{port}", "Origin": f"http://rebind.test:{port}"}
        status, body = _call(f"{url}/api/label", label, rebind)
        assert status == 403 and "'rebind.test:" in json.loads(body)["error"]
        for route in ("/", "/api/task", "/api/task/PMC1_F1", "/api/saved", "/image/PMC1_F1", "/nowhere"):
            status, body = _call(url + route, headers={"Host": f"rebind.test:{port}"})
            assert status == 403 and "not this annotation server" in json.loads(body)["error"], route
        refused = (
            {"Host": f"127.0.0.1:{port + 1}"},  # the right name, another port
            {"Host": ""},
            {"Origin": f"https://127.0.0.1:{port}"},  # another scheme is another origin
            {"Origin": f"http://127.0.0.1:{port}.rebind.test"},
            {"Origin": "null"},
        )
        for headers in refused:
            status, _ = _call(f"{url}/api/label", label, headers)
            assert status == 403, headers
        assert not session.label_file.exists()
        for name in ("127.0.0.1", "localhost"):
            own = {"Host": f"{name}:{port}", "Origin": f"http://{name}:{port}"}
            assert _call(f"{url}/api/task", headers=own)[0] == 200
        own = {"Host": f"localhost:{port}", "Origin": f"http://localhost:{port}"}
        assert _call(f"{url}/api/label", label, own)[0] == 200
    finally:
        server.shutdown()


def test_annotator_names_are_matched_in_full(paths, monkeypatch, capsys):
    tasks = load_tasks(paths, "dr_a")
    for name in ("dr_a\n", ".", "..", "-rf", "--help", ".hidden", "dr a", "", "a" * 65):
        with pytest.raises(AnnotationError, match="annotator .*it names the label file"):
            AnnotationSession(paths, name, tasks)
    assert AnnotationSession(paths, "Dr.Smith-2_x", tasks).label_file.name == "Dr.Smith-2_x.jsonl"
    monkeypatch.chdir(paths.root)
    for arg in ("--annotator=dr_a\n", "--annotator=-rf", "--annotator=.."):
        assert cli.main(["annotate", arg, "--port", "0"]) == 2
        assert "vital annotate: annotator" in capsys.readouterr().err
    assert not paths.labels_dir.exists()


def test_bodies_not_utf8_cut_short_or_with_overlapping_ties_are_refused(paths):
    session = AnnotationSession(paths, "dr_a", load_tasks(paths, "dr_a"))
    server, url = _serve(session, read_timeout=0.5)
    port = server.server_address[1]
    ids = _ids(session)
    good = json.dumps({"pair_id": "PMC1_F1", "ranking": ids}).encode()

    def post(body: bytes, length: int | None = None, **kwargs) -> tuple[int, dict]:
        head = (
            f"POST /api/label HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body) if length is None else length}\r\n\r\n"
        )
        return _raw(url, head.encode() + body, **kwargs)

    try:
        status, body = post(b'{"pair_id": "PMC1_F1\xff"}')
        assert status == 400 and "not UTF-8" in body["error"]
        start = time.monotonic()
        status, body = post(good, length=len(good) + 10)  # the last 10 bytes never come
        assert status == 408 and "nothing was saved" in body["error"]
        assert time.monotonic() - start < 4
        status, body = post(good, length=len(good) + 10, shut_write=True)  # the client gave up
        assert status == 400 and f"ended after {len(good)} of the {len(good) + 10} bytes" in body["error"]
        for ties in ([ids[0:2], ids[1:3]], [ids[0:2], ids[0:2]], [[ids[0], ids[0]]]):
            status, body = _call(f"{url}/api/label", {"pair_id": "PMC1_F1", "ranking": ids, "ties": ties})
            error = json.loads(body)["error"]
            assert status == 400 and "PMC1_F1" in error and "more than one tie group" in error, ties
        assert not session.label_file.exists()  # nothing half-read was saved
        assert post(good)[0] == 200  # and the server still serves complete bodies
    finally:
        server.shutdown()
    assert [line["ranking"] for line in read_jsonl(session.label_file)] == [ids]


def test_unreadable_label_lines_are_named_at_start_and_the_good_ones_count(paths):
    first = AnnotationSession(paths, "dr_a", load_tasks(paths, "dr_a"))
    first.submit({"pair_id": "PMC1_F1", "ranking": _ids(first)})
    file = first.label_file
    with file.open("ab") as f:
        f.write(b'{"pair_id": "PMC2_F1", "annotator": "dr_a", "note": "caf\xe9"}\n')  # Latin-1, not UTF-8
        f.write(b'{"pair_id": "PMC2_F1", "annotator": "dr_a", "rank')  # a crash cut the last line
    again = AnnotationSession(paths, "dr_a", load_tasks(paths, "dr_a"))
    assert [line.split(": ")[0] for line in again.unreadable] == [f"{file}:2", f"{file}:3"]
    assert "not UTF-8 (byte 0xe9 at column 57)" in again.unreadable[0]
    assert "half-written" in again.unreadable[1]
    assert again.progress()["ranked"] == 1 and again.next_task().pair_id == "PMC2_F1"
    again.submit({"pair_id": "PMC2_F1", "ranking": _ids(again, "PMC2_F1")})  # on a line of its own
    assert json.loads(file.read_bytes().split(b"\n")[3])["pair_id"] == "PMC2_F1"
    result = labels.run(LabelsParams(backend="files"), paths)
    assert result["labels"] == 2 and result["dropped_by_reason"] == {"invalid_json": 1, "invalid_utf8": 1}

    proc, line = _cli(["--annotator", "dr_a", "--port", "0"], cwd=paths.root)
    err = _stop(proc)
    assert "2 of 2 figures ranked" in line
    assert "unreadable line data/labels/dr_a.jsonl:2: not UTF-8" in err
    assert "unreadable line data/labels/dr_a.jsonl:3: not JSON" in err


def test_a_saved_ranking_is_corrected_by_appending_a_record_that_supersedes_it(paths):
    session = AnnotationSession(paths, "dr_a", load_tasks(paths, "dr_a"))
    server, url = _serve(session)
    ids = _ids(session)
    try:
        assert _call(f"{url}/api/label", {"pair_id": "PMC1_F1", "ranking": ids})[0] == 200
        status, body = _call(f"{url}/api/saved")
        assert status == 200 and [s["ranking"] for s in json.loads(body)["saved"]] == [ids]
        status, body = _call(f"{url}/api/task/PMC1_F1")
        assert status == 200 and json.loads(body)["saved"]["ranking"] == ids
        assert json.loads(body)["task"]["pair_id"] == "PMC1_F1"
        fixed = {"pair_id": "PMC1_F1", "ranking": ids[::-1], "ties": [ids[:-3:-1]]}
        status, body = _call(f"{url}/api/label", fixed)
        assert status == 409 and "reopen it" in json.loads(body)["error"]  # not without saying so
        status, body = _call(f"{url}/api/label", {**fixed, "correction": "yes"})
        assert status == 400 and "correction must be true or false" in json.loads(body)["error"]
        status, body = _call(f"{url}/api/label", {**fixed, "correction": True})
        assert status == 200 and json.loads(body)["progress"]["ranked"] == 1
        assert json.loads(_call(f"{url}/api/task/PMC1_F1")[1])["saved"]["ranking"] == ids[::-1]
    finally:
        server.shutdown()
    lines = list(read_jsonl(session.label_file))
    assert [line["ranking"] for line in lines] == [ids, ids[::-1]]  # appended; the first line untouched
    restarted = AnnotationSession(paths, "dr_a", load_tasks(paths, "dr_a"))
    assert restarted.saved["PMC1_F1"]["ranking"] == ids[::-1] and restarted.next_task().pair_id == "PMC2_F1"
    result = labels.run(LabelsParams(backend="files"), paths)
    (pref,) = read_jsonl(paths.labels)
    assert result["labels"] == 1 and pref["ranking"] == ids[::-1] and pref["ties"] == [ids[:-3:-1]]


def test_routes_ignore_query_strings_and_send_security_headers(paths):
    session = AnnotationSession(paths, "dr_a", load_tasks(paths, "dr_a"))
    server, url = _serve(session)
    try:
        for route in (
            "/?from=mail",
            "/index.html?x#y",
            "/api/task?_=1",
            "/api/saved?x",
            "/image/PMC1_F1?v=2",
        ):
            status, body, headers = _call(url + route, with_headers=True)
            assert status == 200, route
        status, body = _call(f"{url}/api/skip?x=1", {"pair_id": "PMC1_F1"})
        assert status == 200 and json.loads(body)["progress"]["skipped"] == 1
        for route, expected in (("/", 200), ("/api/task", 200), ("/nowhere?x", 404)):
            status, _, headers = _call(url + route, with_headers=True)
            csp = headers["Content-Security-Policy"]
            assert status == expected and "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
            assert re.search(r"script-src 'sha256-[A-Za-z0-9+/=]{44}'", csp) and "unsafe" not in csp
            assert headers["X-Content-Type-Options"] == "nosniff" and headers["X-Frame-Options"] == "DENY"
        status, _, headers = _call(url, headers={"Host": "rebind.test"}, with_headers=True)
        assert status == 403 and headers["X-Frame-Options"] == "DENY"
    finally:
        server.shutdown()


def test_serving_the_network_warns_there_is_no_login_and_prints_an_address_others_can_open(paths):
    proc, line = _cli(["--annotator", "dr_a", "--host", "0.0.0.0", "--port", "0"], cwd=paths.root)
    try:
        address = re.search(r"open (http://\S+/)", line).group(1)
        assert "0.0.0.0" not in address and "127.0.0.1" not in address
        status, body = _call(f"{address}api/task")  # by that address, as another machine would
        assert status == 200 and json.loads(body)["task"]["pair_id"] == "PMC1_F1"
    finally:
        err = _stop(proc)
    assert "WARNING: serving every network interface with no login" in err
    proc, line = _cli(["--annotator", "dr_a", "--port", "0"], cwd=paths.root)
    assert re.search(r"open http://127\.0\.0\.1:\d+/", line) and "WARNING" not in _stop(proc)


def _project(root: Path, n: int) -> Paths:
    """n sampled figures with 3 candidates each."""
    paths = Paths(root)
    (paths.corpus / "images").mkdir(parents=True)
    figures, cands = [], []
    for i in range(n):
        pid, image = f"PMC{i}_F1", f"images/{i}.png"
        Image.new("RGB", (8, 8), (i, 0, 0)).save(paths.corpus / image)
        figures.append({"pair_id": pid, "pmid": str(i), "fig_caption": f"Figure {i}.", "image": image})
        for k in range(3):
            turns = [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": f"{pid} {k}"}]
            cands.append(
                {
                    "id": f"{pid}#{k}",
                    "pair_id": pid,
                    "image": image,
                    "domain": "ct_scan",
                    "conversations": turns,
                }
            )
    write_jsonl(paths.sample, figures)
    write_jsonl(paths.candidates, cands)
    return paths


def test_overlap_serves_a_shared_set_first_so_agreement_is_measured_by_design(tmp_path):
    paths = _project(tmp_path, 8)
    plain = [t.pair_id for t in load_tasks(paths, "dr_a")]
    assert plain == [f"PMC{i}_F1" for i in range(8)] == [t.pair_id for t in load_tasks(paths, "dr_b")]
    who = ("dr_a", "dr_b", "dr_c", "dr_d")
    orders = {a: [t.pair_id for t in load_tasks(paths, a, overlap=3)] for a in who}
    shared = orders["dr_a"][:3]
    assert all(order[:3] == shared for order in orders.values())  # the same figures, the same order
    assert all(sorted(order) == sorted(plain) for order in orders.values())  # and then every other one
    assert len({tuple(order[3:]) for order in orders.values()}) > 1  # spread differently per clinician
    assert [t.pair_id for t in load_tasks(paths, "dr_a", overlap=3)] == orders["dr_a"]  # stable
    assert [t.pair_id for t in load_tasks(paths, "dr_a", overlap=3, limit=4)] == orders["dr_a"][:4]
    with pytest.raises(AnnotationError, match="overlap=9: only 8 sampled figures"):
        load_tasks(paths, "dr_a", overlap=9)
    with pytest.raises(AnnotationError, match="overlap=-1"):
        load_tasks(paths, "dr_a", overlap=-1)

    # two clinicians rank their first three figures: the labels stage measures agreement on exactly those
    for annotator, flip in (("dr_a", False), ("dr_b", True)):
        session = AnnotationSession(paths, annotator, load_tasks(paths, annotator, overlap=3))
        for k in range(3):
            ranking = sorted(_ids(session, orders[annotator][k]))
            if flip and k == 0:
                ranking[1:] = ranking[:0:-1]  # one disagreement: the last two swapped
            session.submit({"pair_id": orders[annotator][k], "ranking": ranking})
    result = labels.run(LabelsParams(backend="files"), paths)
    agreement = result["clinician_agreement"]
    assert (
        result["overlap_tasks"] == 3
        and agreement["figures"] == 3
        and agreement["annotators"] == list(who[:2])
    )
    assert agreement["pairs"] == 9 and agreement["agreement"] == round(8 / 9, 4)
    assert 0.5 < agreement["krippendorff_alpha"] < 1 and agreement["alpha_units"] == 9

    proc, line = _cli(["--annotator", "dr_c", "--overlap", "3", "--port", "0"], cwd=paths.root)
    _stop(proc)
    assert "0 of 8 figures ranked (the first 3 shared by every annotator)" in line


def test_ci_installs_chromium_when_it_is_missing(tmp_path):
    """.ci/run on a fresh machine (no chromium on PATH): apt-get installs Debian's chromium, then the
    suite runs with CI=true. apt-get and make are recorded here instead of run."""
    bin_, log = tmp_path / "bin", tmp_path / "log"
    bin_.mkdir()
    bash = shutil.which("bash")
    for tool in ("dirname", "id"):
        (bin_ / tool).symlink_to(shutil.which(tool))
    for name, body in (
        ("apt-get", f'echo "apt-get $* CI=${{CI:-}}" >> {log}'),
        ("make", f'echo "make $* CI=${{CI:-}}" >> {log}'),
        ("sudo", 'exec "$@"'),
    ):
        (bin_ / name).write_text(f"#!{bash}\n{body}\n")
        (bin_ / name).chmod(0o755)
    env = {"PATH": str(bin_), "HOME": str(tmp_path)}
    subprocess.run([bash, str(REPO / ".ci" / "run")], env=env, check=True)
    assert log.read_text().splitlines() == [
        "apt-get update CI=true",
        "apt-get install -y chromium CI=true",
        "make test CI=true",
    ]
    log.unlink()
    (bin_ / "chromium").symlink_to(bin_ / "make")  # already there: nothing to install
    subprocess.run([bash, str(REPO / ".ci" / "run")], env=env, check=True)
    assert log.read_text().splitlines() == ["make test CI=true"]


def test_the_browser_tests_fail_in_ci_without_chromium_and_skip_elsewhere(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("VITAL_CHROMIUM", "CI")}
    env["PATH"] = str(Path(sys.executable).parent)  # python, and no chromium
    test = f"{Path(__file__).name}::test_a_figure_ranked_in_another_tab_moves_the_page_on"
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"tests/{test}"]
    ci = subprocess.run(
        [*command, "--basetemp", str(tmp_path / "ci")],
        cwd=REPO,
        env={**env, "CI": "true"},
        capture_output=True,
        text=True,
    )
    assert ci.returncode == 1 and "1 failed" in ci.stdout
    assert "CI=true and the browser test cannot run: needs Debian's chromium" in ci.stdout
    here = subprocess.run(
        [*command, "--basetemp", str(tmp_path / "here")], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert here.returncode == 0 and "1 skipped" in here.stdout


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
                lambda m: (
                    complaints.append(f"{m.text} {m.location}") if m.type in ("error", "warning") else None
                ),
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
            page.wait_for_selector("#saved")
            page.screenshot(path=str(tmp_path / "annotate-saved-420.png"), full_page=True)
            assert page.evaluate("document.documentElement.scrollWidth") <= 420
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
    for name in (
        "annotate-1280.png",
        "annotate-420.png",
        "annotate-saved-420.png",
        "annotate-correct-420.png",
    ):
        assert (tmp_path / name).stat().st_size > 0


def test_a_figure_ranked_in_another_tab_moves_the_page_on(paths, tmp_path):
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
            tabs[1].screenshot(path=str(tmp_path / "annotate-409.png"), full_page=True)
            assert tabs[1].is_enabled("#skip") and tabs[1].is_disabled("#submit")
            browser.close()
    finally:
        server.shutdown()
    assert len(list(read_jsonl(paths.labels_dir / "dr_c.jsonl"))) == 1


def test_active_orders_have_known_answers_on_tiny_inputs():
    from vital.annotate.order import (
        OrderError,
        disagreement,
        figure_order,
        ranked,
        rating_gap,
        tau,
        uncertainty,
    )

    assert rating_gap([3.0, 1.0, 1.5]) == 0.5 and rating_gap([2.0]) == float("inf")
    assert tau([1, 2, 3], [10, 20, 30]) == 1 and tau([1, 2, 3], [3, 2, 1]) == -1
    assert tau([1, 2, 3], [1, 1, 3]) == 2 / 3  # the pair tied by one side counts as neither
    figures = {"a": ["a0", "a1", "a2"], "b": ["b0", "b1"], "c": ["c0", "c1"], "d": ["d0", "d1"]}
    sel = {"a0": 0.0, "a1": 0.2, "a2": 3.0, "b0": 1.0, "b1": 1.1, "c0": 0.0, "c1": 2.0, "d0": 1.0}
    judge = {"a0": 1.0, "a1": 2.0, "a2": 3.0, "b0": 5.0, "b1": 1.0, "c0": 1.0, "c1": 4.0, "d0": 1.0}
    assert uncertainty(sel, figures) == pytest.approx({"a": 0.2, "b": 0.1, "c": 2.0})  # d: one scored
    assert disagreement(sel, judge, figures) == {"a": 0.0, "b": 2.0, "c": 0.0}
    ids = list(figures)
    assert figure_order("sample", ids, figures, dict) == ids
    assert figure_order("uncertain", ids, figures, lambda: sel) == ["b", "a", "c", "d"]
    assert figure_order("disagree", ids, figures, lambda: sel, lambda: judge) == ["b", "a", "c", "d"]
    assert ranked(["x", "y", "z"], {"z": 1.0, "y": 1.0}, descending=True) == ["y", "z", "x"]  # stable
    with pytest.raises(OrderError, match="order='best'"):
        figure_order("best", ids, figures, lambda: sel)


# per figure PMC{i}_F1 of _project(8): the selector's smallest gap between its candidates; PMC7_F1 has a
# single scored candidate, so it goes last
GAPS = [0.5, 0.1, 0.9, 0.3, 0.05, 0.7, 0.2, None]
UNCERTAIN = [f"PMC{i}_F1" for i in (4, 1, 6, 3, 0, 5, 2, 7)]
# the judge agrees with the selector's order except on PMC2 (reversed), PMC5 (one swap) and PMC0 (a tie)
JUDGE = {0: [1, 1, 9], 2: [9, 5, 1], 5: [5, 1, 9]}
DISAGREE = [f"PMC{i}_F1" for i in (2, 5, 0, 1, 3, 4, 6, 7)]


def _scores(paths: Paths) -> None:
    scores, judgments = [], []
    for i, gap in enumerate(GAPS):
        pid = f"PMC{i}_F1"
        sel = [0.0, 5.0] if gap is None else [0.0, gap, 5.0]
        for k, s in enumerate(sel):
            scores.append({"candidate_id": f"{pid}#{k}", "pair_id": pid, "score": s})
        for k, s in enumerate(JUDGE.get(i, [1, 5, 9])):
            judgments.append({"candidate_id": f"{pid}#{k}", "pair_id": pid, "score": s})
    scores = [s for s in scores if not (s["pair_id"] == "PMC7_F1" and s["candidate_id"] != "PMC7_F1#0")]
    write_jsonl(paths.scores, scores)
    write_jsonl(paths.judgments, judgments)


def test_order_serves_uncertain_or_disagreeing_figures_first_after_the_overlap_set(tmp_path):
    paths = _project(tmp_path, 8)
    with pytest.raises(AnnotationError, match=r"scores.jsonl: not found \(run the select stage"):
        load_tasks(paths, "dr_a", order="uncertain")
    with pytest.raises(AnnotationError, match="order='random'"):
        load_tasks(paths, "dr_a", order="random")
    _scores(paths)

    def ids(**kw) -> list[str]:
        return [t.pair_id for t in load_tasks(paths, "dr_a", **kw)]

    assert ids(order="uncertain") == UNCERTAIN and ids(order="disagree") == DISAGREE
    assert ids(order="sample") == ids() == [f"PMC{i}_F1" for i in range(8)]
    assert ids(order="uncertain", limit=3) == UNCERTAIN[:3]
    shared = ids(overlap=3)[:3]
    for order, expected in (("uncertain", UNCERTAIN), ("disagree", DISAGREE)):
        assert ids(overlap=3, order=order) == shared + [p for p in expected if p not in shared]

    # the page gets them in that order: the next task after each ranking is the next in the order
    session = AnnotationSession(paths, "dr_a", load_tasks(paths, "dr_a", overlap=2, order="uncertain"))
    server, base = _serve(session)
    try:
        served = []
        for _ in range(8):
            task = json.loads(_call(f"{base}/api/task")[1])["task"]
            served.append(task["pair_id"])
            ranking = sorted(c["id"] for c in task["candidates"])
            assert _call(f"{base}/api/label", {"pair_id": task["pair_id"], "ranking": ranking})[0] == 200
        assert json.loads(_call(f"{base}/api/task")[1])["task"] is None
    finally:
        server.shutdown()
        server.server_close()
    shared2 = ids(overlap=2)[:2]
    assert served == shared2 + [p for p in UNCERTAIN if p not in shared2]

    # bad score files name the line; the command line refuses and names the file
    with paths.scores.open("a") as f:
        f.write('{"candidate_id": "PMC0_F1#9", "score": "high"}\n')
    with pytest.raises(
        AnnotationError, match=r"--order uncertain: .*scores.jsonl:23: bad_line \(needs a string candidate_id"
    ):
        load_tasks(paths, "dr_a", order="uncertain")
    proc = subprocess.run(
        [sys.executable, "-m", "vital.cli", "annotate", "--annotator", "dr_b", "--order", "disagree"],
        cwd=paths.root,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 2 and "scores.jsonl:23: bad_line" in proc.stderr
    _scores(paths)
    proc, line = _cli(["--annotator", "dr_b", "--order", "disagree", "--port", "0"], cwd=paths.root)
    try:
        address = re.search(r"open (http://\S+/)", line).group(1)
        assert json.loads(_call(f"{address}api/task")[1])["task"]["pair_id"] == DISAGREE[0]
    finally:
        _stop(proc)
    assert "0 of 8 figures ranked, disagree first" in line


def test_a_label_file_with_a_bom_is_read_whole_by_the_session_and_the_labels_stage(paths):
    first = AnnotationSession(paths, "dr_a", load_tasks(paths, "dr_a"))
    first.submit({"pair_id": "PMC1_F1", "ranking": _ids(first)})
    file = first.label_file
    file.write_bytes("\ufeff".encode() + file.read_bytes())  # saved again by an editor on Windows
    again = AnnotationSession(paths, "dr_a", load_tasks(paths, "dr_a"))
    assert again.unreadable == [] and again.progress()["ranked"] == 1
    result = labels.run(LabelsParams(backend="files"), paths)
    assert result["labels"] == 1 and result["dropped"] == 0


def test_a_deeply_nested_body_gets_a_400_not_a_dropped_connection(paths):
    server, url = _serve(AnnotationSession(paths, "dr_a", load_tasks(paths, "dr_a")))
    try:
        depth = 100_000
        body = b"[" * depth + b"]" * depth
        head = (
            f"POST /api/label HTTP/1.1\r\nHost: {urlsplit(url).netloc}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode()
        status, reply = _raw(url, head + body)
        assert status == 400 and "nests" in reply["error"]
        assert _call(url + "/api/task")[0] == 200  # the server still answers
    finally:
        server.shutdown()


def test_two_servers_on_one_label_file_show_the_files_true_progress(paths):
    first = AnnotationSession(paths, "dr_a", load_tasks(paths, "dr_a"))
    second = AnnotationSession(paths, "dr_a", load_tasks(paths, "dr_a"))
    server, url = _serve(second)
    try:
        first.submit({"pair_id": "PMC1_F1", "ranking": _ids(first)})  # ranked on the other server
        status, body = _call(url + "/api/task")
        reply = json.loads(body)
        assert status == 200 and reply["progress"]["ranked"] == 1
        assert reply["task"]["pair_id"] == "PMC2_F1"
        assert [r["pair_id"] for r in json.loads(_call(url + "/api/saved")[1])["saved"]] == ["PMC1_F1"]
        second.submit({"pair_id": "PMC2_F1", "ranking": _ids(second, "PMC2_F1")})
        assert first.progress()["ranked"] == 2 and first.next_task() is None
    finally:
        server.shutdown()
