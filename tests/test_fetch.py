"""vital fetch-images against a real HTTP server on 127.0.0.1 serving PMC-style .tar.gz packages, with
injected 404s, connection resets, 503s, short bodies, slow responses, truncated archives and a SIGKILL."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import tarfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from vital.fetch import FetchOptions, HostRateLimiter, fetch_images, read_url_records
from vital.ratelimit import retry_after_s
from vital.shards import open_image, read_bytes

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- a PMC-like server
def image_bytes(seed: int, fmt: str = "PNG", size: tuple[int, int] = (40, 30)) -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, fmt)
    return buf.getvalue()


def targz(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in files.items():
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


class PMC:
    """Packages by URL path; ``faults[path]`` is a list of what the next requests get (then 200)."""

    def __init__(self):
        self.packages: dict[str, bytes] = {}
        self.faults: dict[str, list[str]] = {}
        self.delay = 0.0
        self.log: list[tuple[str, str]] = []  # (path, outcome)
        self.lock = threading.Lock()

    def handler(self):
        pmc = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                with pmc.lock:
                    queue = pmc.faults.get(self.path, [])
                    fault = queue.pop(0) if queue else "ok"
                    pmc.log.append((self.path, fault))
                if pmc.delay:
                    time.sleep(pmc.delay)
                body = pmc.packages.get(self.path)
                if body is None or fault == "404":
                    return self.send_error(404)
                if fault == "reset":  # RST instead of a response
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.connection.close()
                    return
                if fault == "503":
                    return self.send_error(503)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-gzip")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if fault == "short":  # connection drops mid-body
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        return H


@pytest.fixture
def pmc():
    p = PMC()
    server = ThreadingHTTPServer(("127.0.0.1", 0), p.handler())
    server.daemon_threads = True
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    p.base = f"http://127.0.0.1:{server.server_address[1]}"
    yield p
    server.shutdown()
    server.server_close()


def corpus(pmc: PMC, tmp: Path, packages: int = 10, per: int = 3) -> tuple[Path, dict[str, bytes]]:
    """``packages`` articles with ``per`` figures each (PNG and JPEG), plus the broken cases; returns the
    URL file and the expected bytes by pair_id."""
    lines, want = [], {}
    for a in range(packages):
        art = f"PMC{1000 + a}"
        files = {}
        for k in range(per):
            fmt = "JPEG" if k % 2 else "PNG"
            data = image_bytes(a * 10 + k, fmt)
            member = f"{art}/fig{k}.{'jpg' if fmt == 'JPEG' else 'png'}"
            files[member] = data
            pid = f"{art}_fig{k}"
            want[pid] = data
            lines.append(
                {"pair_id": pid, "pmc_tar_url": f"{pmc.base}/pkg/{art}.tar.gz", "image_file_path": member}
            )
        pmc.packages[f"/pkg/{art}.tar.gz"] = targz(files)
    # a withdrawn article (404), a truncated archive, a missing member, a corrupt image, a duplicate pair_id
    lines.append(
        {"pair_id": "gone_fig1", "pmc_tar_url": f"{pmc.base}/pkg/GONE.tar.gz", "image_file_path": "x/a.jpg"}
    )
    good = targz({"T/fig.png": image_bytes(99), "T/pad.bin": os.urandom(4096)})
    pmc.packages["/pkg/TRUNC.tar.gz"] = good[: len(good) // 2]
    lines.append(
        {
            "pair_id": "trunc_fig1",
            "pmc_tar_url": f"{pmc.base}/pkg/TRUNC.tar.gz",
            "image_file_path": "T/pad.bin",
        }
    )
    lines.append(
        {
            "pair_id": "nomember",
            "pmc_tar_url": f"{pmc.base}/pkg/PMC1000.tar.gz",
            "image_file_path": "PMC1000/nope.jpg",
        }
    )
    pmc.packages["/pkg/BAD.tar.gz"] = targz({"B/fig.jpg": b"\xff\xd8 not a jpeg"})
    lines.append(
        {"pair_id": "badimg", "pmc_tar_url": f"{pmc.base}/pkg/BAD.tar.gz", "image_file_path": "B/fig.jpg"}
    )
    lines.insert(5, dict(lines[1]))
    urls = tmp / "urls.jsonl"
    urls.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return urls, want


OPTS = dict(shard_size=4, workers=3, rate=1000.0, backoff=0.01, timeout=5.0)


def tree(d: Path) -> dict[str, bytes]:
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- tests
def test_fetch_writes_shards_index_and_report(pmc: PMC, tmp_path: Path):
    urls, want = corpus(pmc, tmp_path)
    pmc.faults = {
        "/pkg/PMC1001.tar.gz": ["reset", "reset"],
        "/pkg/PMC1002.tar.gz": ["503", "short"],
    }
    out = tmp_path / "corpus" / "shards"
    s = fetch_images(urls, out, FetchOptions(**OPTS))
    assert s["figures"] == 34 and s["fetched"] == 30 and s["duplicates_skipped"] == 1
    assert s["by_reason"] == {
        "bad_image": 1,
        "duplicate_pair_id": 1,
        "member_missing": 1,
        "not_found": 1,
        "truncated_archive": 1,
    }
    assert s["shards"] == 9 and s["this_run"]["packages_downloaded"] == 12
    # each package downloaded once: one 200 per path, the faults retried
    ok = [p for p, f in pmc.log if f == "ok" and p != "/pkg/GONE.tar.gz"]
    assert sorted(ok) == sorted(set(ok)) and len(ok) == 12
    assert [f for p, f in pmc.log if p == "/pkg/PMC1001.tar.gz"] == ["reset", "reset", "ok"]
    report = [json.loads(x) for x in (out / "report.jsonl").read_text().splitlines()]
    by_pid = {r["pair_id"]: r for r in report}
    assert by_pid["gone_fig1"]["url"].endswith("/pkg/GONE.tar.gz") and "404" in by_pid["gone_fig1"]["detail"]
    assert by_pid["nomember"]["reason"] == "member_missing" and "nope.jpg" in by_pid["nomember"]["detail"]
    assert by_pid["PMC1000_fig1"]["reason"] == "duplicate_pair_id"
    # the index points at every figure; bytes as served, readable through open_image
    idx = pq.read_table(out / "index.parquet").to_pylist()
    assert [r["pair_id"] for r in idx] == list(want)
    for r in idx:
        data = read_bytes(r["ref"], root=out.parent)
        assert data == want[r["pair_id"]] and hashlib.sha256(data).hexdigest() == r["sha256"]
        with open_image(r["ref"], root=out.parent) as im:
            assert im.size == (40, 30) == (r["width"], r["height"])
    # WebDataset layout: <key>.<ext> then <key>.json carrying the pair_id, in input order
    with tarfile.open(out / "shard-00000.tar") as tf:
        names = tf.getnames()
        assert names[:4] == ["PMC1000_fig0.png", "PMC1000_fig0.json", "PMC1000_fig1.jpg", "PMC1000_fig1.json"]
        meta = json.loads(tf.extractfile("PMC1000_fig1.json").read())
        assert meta["pair_id"] == "PMC1000_fig1" and meta["image_file_path"] == "PMC1000/fig1.jpg"
    assert not (out / ".staging").exists() and not (out / ".downloads").exists()


def test_retries_exhausted_is_reported_not_fatal(pmc: PMC, tmp_path: Path):
    urls, _ = corpus(pmc, tmp_path, packages=2)
    pmc.faults = {"/pkg/PMC1000.tar.gz": ["503"] * 10}
    s = fetch_images(urls, tmp_path / "out", FetchOptions(**{**OPTS, "retries": 2}))
    assert s["by_reason"]["retries_exhausted"] == 4  # the package's 3 figures and the missing member
    assert [f for p, f in pmc.log if p == "/pkg/PMC1000.tar.gz"] == ["503"] * 3
    assert s["fetched"] == 3


def test_a_response_slower_than_the_timeout_is_retried_then_reported(pmc: PMC, tmp_path: Path):
    urls, _ = corpus(pmc, tmp_path, packages=1)
    pmc.delay = 0.6
    s = fetch_images(
        urls, tmp_path / "out", FetchOptions(**{**OPTS, "timeout": 0.2, "retries": 1, "workers": 8})
    )
    assert s["fetched"] == 0 and s["by_reason"]["retries_exhausted"] == 7
    report = [json.loads(x) for x in (tmp_path / "out/report.jsonl").read_text().splitlines()]
    assert all(
        "2 attempts" in r["detail"] and "timed out" in r["detail"]
        for r in report
        if r["reason"] == "retries_exhausted"
    )


def test_max_side_downscales(pmc: PMC, tmp_path: Path):
    urls, _ = corpus(pmc, tmp_path, packages=2)
    out = tmp_path / "out"
    fetch_images(urls, out, FetchOptions(**{**OPTS, "max_side": 20}))
    for r in pq.read_table(out / "index.parquet").to_pylist():
        assert (r["width"], r["height"]) == (20, 15)
        with open_image(r["ref"], root=out.parent) as im:
            assert im.size == (20, 15) and im.format == ("PNG" if r["member"].endswith("png") else "JPEG")


def test_rerun_skips_done_shards_and_redoes_a_corrupt_one(pmc: PMC, tmp_path: Path):
    urls, _ = corpus(pmc, tmp_path)
    out = tmp_path / "out"
    fetch_images(urls, out, FetchOptions(**OPTS))
    before, hits = tree(out), len(pmc.log)
    s = fetch_images(urls, out, FetchOptions(**OPTS))
    assert len(pmc.log) == hits and s["this_run"]["shards_skipped"] == 9 and tree(out) == before
    # a shard whose bytes no longer match its manifest is not done: refetched, same bytes again
    (out / "shard-00002.tar").write_bytes((out / "shard-00002.tar").read_bytes()[:1000])
    s = fetch_images(urls, out, FetchOptions(**OPTS))
    assert s["this_run"]["shards_skipped"] == 8 and len(pmc.log) > hits and tree(out) == before
    # other shard contents are refused, not mixed in
    with pytest.raises(ValueError, match="--shard-size 4 --max-side None"):
        fetch_images(urls, out, FetchOptions(**{**OPTS, "shard_size": 5}))
    # a shard the input no longer matches is redone: swap two records across shards 0 and 1
    lines = urls.read_text().splitlines()
    lines[3], lines[5] = lines[5], lines[3]
    urls.write_text("\n".join(lines) + "\n")
    s = fetch_images(urls, out, FetchOptions(**OPTS))
    assert s["this_run"]["shards_skipped"] == 7 and s["fetched"] == 30


def test_killed_fetch_resumes_to_the_bytes_of_an_unkilled_run(pmc: PMC, tmp_path: Path):
    urls, _ = corpus(pmc, tmp_path, packages=16)
    ref = tmp_path / "ref" / "shards"
    fetch_images(urls, ref, FetchOptions(**OPTS))
    pmc.delay = 0.15  # slow responses, so the kill lands part-way
    out = tmp_path / "killed" / "shards"
    cmd = [sys.executable, "-m", "vital.cli", "fetch-images", str(urls), "--out", str(out)]
    cmd += ["--shard-size", "4", "--workers", "2", "--rate", "1000", "--backoff", "0.01", "--timeout", "5"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "VITAL_PROGRESS": "off"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not (out / "shard-00002.json").exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = sorted(p.name for p in out.glob("shard-*.json"))
    assert 3 <= len(done) < 13 and not (out / "summary.json").exists()
    # every shard counted as done is whole (its tar is renamed into place before its manifest exists)
    for m in done:
        man = json.loads((out / m).read_text())
        tar = (out / m).with_suffix(".tar")
        assert hashlib.sha256(tar.read_bytes()).hexdigest() == man["sha256"]
    pmc.delay = 0.0
    hits = len(pmc.log)
    s = fetch_images(urls, out, FetchOptions(**OPTS))
    assert s["this_run"]["shards_skipped"] == len(done)
    assert len(pmc.log) - hits < 19  # the done shards' packages were not fetched again
    got, expected = tree(out), tree(ref)
    assert got.keys() == expected.keys()
    for name in got:
        assert got[name] == expected[name], name


def test_bad_input_names_the_line(tmp_path: Path):
    f = tmp_path / "urls.jsonl"
    f.write_text(
        '{"pair_id": "a", "pmc_tar_url": "http://x/a.tar.gz", "image_file_path": "a/b.jpg"}\n{"pair_id": "b"}\n'
    )
    figures, refused, lines = read_url_records(f)
    assert [x.pair_id for x in figures] == ["a"] and lines == 2
    assert refused == [
        {
            "pair_id": "b",
            "url": None,
            "where": f"{f}:2",
            "reason": "missing_field",
            "detail": "missing or empty pmc_tar_url, image_file_path",
        }
    ]
    with pytest.raises(ValueError, match="--shard-size"):
        fetch_images(f, tmp_path / "o", FetchOptions(shard_size=0))
    from vital.cli import main

    assert main(["fetch-images", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "o")]) == 2


def test_rate_limit_is_per_host():
    lim = HostRateLimiter(rate=20.0)
    t0 = time.monotonic()
    for _ in range(6):
        lim.wait("http://a.example/x")
    assert time.monotonic() - t0 >= 0.24  # 5 intervals of 50 ms
    t1 = time.monotonic()
    lim.wait("http://b.example/x")
    assert time.monotonic() - t1 < 0.03  # another host does not wait for a.example's slots


def test_host_limiter_refuses_a_slot_past_the_deadline_and_holds_for_retry_after():
    lim = HostRateLimiter(rate=10.0)
    assert lim.wait("http://a.example/1")
    t0 = time.monotonic()
    assert not lim.wait("http://a.example/2", deadline=t0 + 0.01)  # the next slot is 100 ms away
    assert time.monotonic() - t0 < 0.05  # refused without sleeping, and without taking the slot:
    assert lim.wait("http://a.example/3") and 0.05 < time.monotonic() - t0 < 0.2
    lim.hold("http://a.example/4", 0.3)
    t1 = time.monotonic()
    assert lim.wait("http://a.example/4") and time.monotonic() - t1 >= 0.25


def test_retry_after_is_read_the_same_by_fetch_and_the_llm_client():
    from email.message import Message
    from email.utils import formatdate

    headers = Message()  # urllib's response headers: names are case-insensitive
    headers["Retry-After"] = formatdate(time.time() + 30).replace("+0000", "-0000")  # a UTC date, no zone
    assert 25 < retry_after_s(headers) <= 30
    headers.replace_header("Retry-After", "7")
    assert retry_after_s(headers) == 7.0 and retry_after_s({}) is None


def test_the_command_and_the_stage_build_the_same_options_by_default():
    from vital.cli import build_parser
    from vital.fetch.options import options_from
    from vital.params import FetchParams

    args = build_parser().parse_args(["fetch-images", "urls.jsonl"])
    assert options_from(args) == options_from(FetchParams()) == FetchOptions()
    assert options_from(FetchParams(max_package_mb=1, max_member_mb=0.5)).max_member_bytes == 2**19
