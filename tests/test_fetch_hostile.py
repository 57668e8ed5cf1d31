"""vital fetch-images against hostile servers and input on 127.0.0.1 (issue 25 items 1-8): pixel and
zip bombs, sparse members, endless and trickling bodies, non-http URLs and redirects, 429 with
Retry-After, bad input lines, long pair_ids, kill leftovers, link members, HTML served with 200, a run
that fetches nothing, file modes."""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import resource
import struct
import subprocess
import sys
import tarfile
import threading
import time
import zlib
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.test_fetch import image_bytes, targz
from vital.fetch import FetchOptions, fetch_images, read_url_records
from vital.io import read_jsonl
from vital.shards import open_image

ROOT = Path(__file__).resolve().parents[1]
FAST = dict(shard_size=4, workers=3, rate=1000.0, backoff=0.01, timeout=5.0, retries=2)


# ---------------------------------------------------------------- a server with a handler per path
class Server:
    """``routes[path](handler)`` answers a GET; ``hits[path]`` are the monotonic times of the requests."""

    def __init__(self):
        self.routes: dict[str, Callable] = {}
        self.hits: dict[str, list[float]] = {}
        srv = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                srv.hits.setdefault(self.path, []).append(time.monotonic())
                route = srv.routes.get(self.path)
                if route is None:
                    return self.send_error(404)
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    route(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def package(self, path: str, body: bytes, ctype: str = "application/x-gzip") -> str:
        def send(h):
            h.send_response(200)
            h.send_header("Content-Type", ctype)
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            h.wfile.write(body)

        self.routes[path] = send
        return self.base + path

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


@pytest.fixture
def server2():
    s = Server()
    yield s
    s.close()


def urls_file(tmp: Path, rows: list[dict | str]) -> Path:
    f = tmp / "urls.jsonl"
    f.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return f


def row(pid: str, url: str, member: str) -> dict:
    return {"pair_id": pid, "pmc_tar_url": url, "image_file_path": member}


def report(out: Path) -> dict[str, dict]:
    return {r["pair_id"] or r["where"]: r for r in read_jsonl(out / "report.jsonl")}


def index_ids(out: Path) -> list[str]:
    return pq.read_table(out / "index.parquet").column("pair_id").to_pylist()


# ---------------------------------------------------------------- hostile payloads
def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def jpeg_claiming(width: int, height: int) -> bytes:
    data = bytearray(image_bytes(1, "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def bomb_package(member: str, inflated: int) -> bytes:
    """A .tar.gz whose one member inflates to ``inflated`` zero bytes, streamed (never in memory)."""
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=1) as gz:
        ti = tarfile.TarInfo(member)
        ti.size = inflated
        gz.write(ti.tobuf(tarfile.GNU_FORMAT))
        zeros = b"\0" * (1 << 20)
        left = inflated
        while left:
            gz.write(zeros[: min(left, len(zeros))])
            left -= min(left, len(zeros))
        gz.write(b"\0" * (-inflated % 512) + b"\0" * 1024)
    return buf.getvalue()


def sparse_package(member: str, real_size: int) -> bytes:
    """A .tar.gz of one GNU sparse member: 512 stored bytes that expand to ``real_size`` on reading."""
    ti = tarfile.TarInfo(member)
    ti.type, ti.size = tarfile.GNUTYPE_SPARSE, 512
    header = bytearray(ti.tobuf(tarfile.GNU_FORMAT))
    header[386:398] = b"%011o\0" % 0  # first sparse entry: offset 0 ...
    header[398:410] = b"%011o\0" % 512  # ... 512 bytes
    header[483:495] = b"%011o\0" % real_size  # realsize
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    return gzip.compress(bytes(header) + b"\x01" * 512 + b"\0" * 1024)


def link_package() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        png = image_bytes(3)
        ti = tarfile.TarInfo("L/real.png")
        ti.size = len(png)
        tf.addfile(ti, io.BytesIO(png))
        sym = tarfile.TarInfo("L/sym.png")
        sym.type, sym.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(sym)
        hard = tarfile.TarInfo("L/hard.png")
        hard.type, hard.linkname = tarfile.LNKTYPE, "L/real.png"
        tf.addfile(hard)
    return buf.getvalue()


# ---------------------------------------------------------------- 1. pixel bombs
def test_an_image_claiming_50000x50000_pixels_is_refused_and_the_run_completes(
    server: Server, tmp_path: Path
):
    a = server.package(
        "/a.tar.gz", targz({"A/png.png": png_claiming(50_000, 50_000), "A/ok.png": image_bytes(1)})
    )
    b = server.package("/b.tar.gz", targz({"B/jpg.jpg": jpeg_claiming(50_000, 50_000)}))
    f = urls_file(
        tmp_path, [row("png", a, "A/png.png"), row("ok", a, "A/ok.png"), row("jpg", b, "B/jpg.jpg")]
    )
    out = tmp_path / "out"
    for _ in range(2):  # and a rerun completes the same way
        s = fetch_images(f, out, FetchOptions(**FAST))
        assert s["fetched"] == 1 and index_ids(out) == ["ok"]
        rep = report(out)
        assert rep["png"]["reason"] == rep["jpg"]["reason"] == "too_many_pixels"
        assert all("max_pixels 50000000" in rep[k]["detail"] for k in ("png", "jpg"))


# ---------------------------------------------------------------- 2. zip bombs and sparse members
def test_a_member_inflating_past_its_bound_or_sparse_is_refused_unread(server: Server, tmp_path: Path):
    bomb = server.package("/bomb.tar.gz", bomb_package("Z/fig.png", 300 << 20))
    sparse = server.package("/sparse.tar.gz", sparse_package("S/fig.png", 3 << 30))
    f = urls_file(tmp_path, [row("bomb", bomb, "Z/fig.png"), row("sparse", sparse, "S/fig.png")])
    t0 = time.monotonic()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    s = fetch_images(f, tmp_path / "out", FetchOptions(**FAST))
    grew_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    rep = report(tmp_path / "out")
    assert s["fetched"] == 0 and {r["reason"] for r in rep.values()} == {"member_too_large"}
    assert "314572800 bytes" in rep["bomb"]["detail"] and str(3 << 30) in rep["sparse"]["detail"]
    assert grew_mb < 100 and time.monotonic() - t0 < 30


# ---------------------------------------------------------------- 3. endless and trickling bodies
def _endless(h):
    h.send_response(200)
    h.send_header("Content-Type", "application/x-gzip")
    h.end_headers()  # no Content-Length: the body ends when the connection does
    h.wfile.write(b"\x1f\x8b")
    block = os.urandom(1 << 16)
    for _ in range(4096):  # 256 MiB, far past the test's bound
        h.wfile.write(block)


def _trickle(h):
    h.send_response(200)
    h.send_header("Content-Type", "application/x-gzip")
    h.end_headers()
    h.wfile.write(b"\x1f\x8b")
    for _ in range(600):  # 100 bytes a second for up to 30 s
        h.wfile.write(b"x" * 5)
        h.wfile.flush()
        time.sleep(0.05)


def test_endless_and_trickling_bodies_end_at_their_bounds(server: Server, tmp_path: Path):
    server.routes["/endless.tar.gz"] = _endless
    server.routes["/trickle.tar.gz"] = _trickle
    f = urls_file(
        tmp_path,
        [
            row("endless", server.base + "/endless.tar.gz", "E/f.png"),
            row("trickle", server.base + "/trickle.tar.gz", "T/f.png"),
        ],
    )
    out = tmp_path / "out"
    t0 = time.monotonic()
    fetch_images(f, out, FetchOptions(**FAST, max_package_bytes=2 << 20, package_s=2.0))
    assert time.monotonic() - t0 < 10
    rep = report(out)
    assert rep["endless"]["reason"] == "package_too_large" and rep["trickle"]["reason"] == "package_timeout"
    assert sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) < 1 << 20


# ---------------------------------------------------------------- 4. schemes, redirects, Retry-After
def test_only_http_urls_are_read_and_redirects_are_checked(server: Server, tmp_path: Path):
    secret = tmp_path / "secret.tar.gz"
    secret.write_bytes(targz({"X/f.png": image_bytes(5)}))

    def to_ftp(h):
        h.send_response(302)
        h.send_header("Location", "ftp://127.0.0.1/x.tar.gz")
        h.end_headers()

    server.routes["/ftp"] = to_ftp
    server.package("/ok.tar.gz", targz({"O/f.png": image_bytes(6)}))

    def to_ok(h):
        h.send_response(301)
        h.send_header("Location", "/ok.tar.gz")
        h.end_headers()

    server.routes["/moved"] = to_ok
    f = urls_file(
        tmp_path,
        [
            row("file", secret.as_uri(), "X/f.png"),
            row("data", "data:application/gzip;base64,H4sI", "X/f.png"),
            row("ftp", server.base + "/ftp", "X/f.png"),
            row("moved", server.base + "/moved", "O/f.png"),
        ],
    )
    out = tmp_path / "out"
    fetch_images(f, out, FetchOptions(**FAST))
    rep = report(out)
    assert rep["file"]["reason"] == rep["data"]["reason"] == "bad_url"
    assert rep["file"]["where"] == f"{f}:1" and rep["data"]["where"] == f"{f}:2"
    assert rep["ftp"]["reason"] == "bad_redirect" and "ftp:" in rep["ftp"]["detail"]
    assert index_ids(out) == ["moved"]


def test_redirects_across_hosts_keep_the_target_hosts_rate(server: Server, server2: Server, tmp_path: Path):
    """Two origin hosts redirect to one mirror: the mirror still sees at most ``rate`` requests a second."""
    third = Server()
    try:
        rows = []
        for i in range(6):
            origin = (server, server2)[i % 2]
            target = third.package(f"/p{i}.tar.gz", targz({f"P{i}/f.png": image_bytes(i)}))

            def redirect(h, target=target):
                h.send_response(302)
                h.send_header("Location", target)
                h.end_headers()

            origin.routes[f"/p{i}"] = redirect
            rows.append(row(f"p{i}", f"{origin.base}/p{i}", f"P{i}/f.png"))
        out = tmp_path / "out"
        fetch_images(urls_file(tmp_path, rows), out, FetchOptions(**{**FAST, "workers": 6, "rate": 4.0}))
        assert len(index_ids(out)) == 6
        times = sorted(t for hits in third.hits.values() for t in hits)
        # 4/s: six starts span >= 1.25 s (1.0 leaves slack for a loaded machine); rate-limited per origin
        # only, two origins' redirects reach the mirror in pairs and span 0.5 s
        assert times[-1] - times[0] >= 1.0, [round(t - times[0], 2) for t in times]
    finally:
        third.close()


def test_retry_after_on_429_is_honoured(server: Server, tmp_path: Path):
    body = targz({"R/f.png": image_bytes(7)})
    answers = ["429", "ok"]

    def limited(h):
        if answers.pop(0) == "429":
            h.send_response(429)
            h.send_header("Retry-After", "2")
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        h.send_response(200)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    server.routes["/r.tar.gz"] = limited
    out = tmp_path / "out"
    fetch_images(
        urls_file(tmp_path, [row("r", server.base + "/r.tar.gz", "R/f.png")]), out, FetchOptions(**FAST)
    )
    first, second = server.hits["/r.tar.gz"]
    assert second - first >= 1.9 and index_ids(out) == ["r"]


def test_a_retry_after_beyond_the_bound_fails_the_package_at_once(server: Server, tmp_path: Path):
    def closed(h):
        h.send_response(429)
        h.send_header("Retry-After", "3600")
        h.send_header("Content-Length", "0")
        h.end_headers()

    server.routes["/c.tar.gz"] = closed
    out = tmp_path / "out"
    t0 = time.monotonic()
    fetch_images(
        urls_file(tmp_path, [row("c", server.base + "/c.tar.gz", "C/f.png")]), out, FetchOptions(**FAST)
    )
    assert time.monotonic() - t0 < 5 and report(out)["c"]["reason"] == "rate_limited"


# ---------------------------------------------------------------- 5. bad input lines
def test_bad_lines_are_reported_with_their_line_and_the_run_goes_on(server: Server, tmp_path: Path):
    pkg = server.package("/g.tar.gz", targz({f"G/{i}.png": image_bytes(i) for i in range(3)}))
    f = tmp_path / "urls.jsonl"
    lines = [
        json.dumps(row("g0", pkg, "G/0.png")),
        "",
        "{not json",
        "[1, 2]",
        "42",
        json.dumps(row("noscheme", "www.ncbi.nlm.nih.gov/pmc/x.tar.gz", "G/1.png")),
        "   ",
        json.dumps(row("g1", pkg, "G/1.png")),
        json.dumps(row("g2", pkg, "G/2.png")),
    ]
    f.write_bytes(b"\xef\xbb\xbf" + "\n".join(lines).encode() + b"\n")  # with a UTF-8 BOM
    out = tmp_path / "out"
    s = fetch_images(f, out, FetchOptions(**FAST))
    assert sorted(index_ids(out)) == ["g0", "g1", "g2"] and s["input_lines"] == 9
    refused = {r["where"]: r["reason"] for r in read_jsonl(out / "report.jsonl")}
    assert refused == {
        f"{f}:3": "bad_json",
        f"{f}:4": "not_an_object",
        f"{f}:5": "not_an_object",
        f"{f}:6": "bad_url",
    }


_junk = st.one_of(
    st.text(max_size=30),
    st.just("[]"),
    st.just("null"),
    st.builds(
        json.dumps,
        st.dictionaries(st.sampled_from(["pair_id", "pmc_tar_url", "image_file_path"]), st.text(max_size=8)),
    ),
)
_good = st.builds(
    lambda pid, n: json.dumps(row(pid, f"https://h{n}.example/p.tar.gz", "a/b.png")),
    st.text(min_size=1, max_size=300).filter(lambda p: p.strip()),
    st.integers(0, 3),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(st.one_of(_junk, _good, st.just("")), max_size=25), bom=st.booleans())
def test_every_input_line_is_a_figure_or_a_refusal_naming_it(tmp_path: Path, lines: list[str], bom: bool):
    text = "\n".join(x.replace("\n", " ").replace("\r", " ") for x in lines) + "\n"
    f = tmp_path / "prop.jsonl"
    f.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8", "surrogatepass"))
    figures, refused, _ = read_url_records(f)
    physical = text.split("\n")[:-1]
    nonblank = [i for i, x in enumerate(physical, 1) if x.strip()]
    assert len(figures) + len(refused) == len(nonblank)
    assert {int(r["where"].rsplit(":", 1)[1]) for r in refused} <= set(nonblank)
    assert len({fig.pair_id for fig in figures}) == len(figures)
    assert all(fig.url.startswith("https://") for fig in figures)
    for r in refused:
        n = int(r["where"].rsplit(":", 1)[1])
        if r["reason"] == "duplicate_pair_id":
            continue
        assert physical[n - 1].strip(), r  # a refusal names a line that has the refused text


# ---------------------------------------------------------------- 6. long pair_ids
def test_a_300_byte_pair_id_is_fetched(server: Server, tmp_path: Path):
    long_id = "PMC" + "9" * 297
    pkg = server.package("/l.tar.gz", targz({"L/f.png": image_bytes(8)}))
    out = tmp_path / "out"
    fetch_images(urls_file(tmp_path, [row(long_id, pkg, "L/f.png")]), out, FetchOptions(**FAST))
    table = pq.read_table(out / "index.parquet").to_pylist()
    assert [r["pair_id"] for r in table] == [long_id]
    with open_image(table[0]["ref"], tmp_path) as im:
        assert im.size == (40, 30)


# ---------------------------------------------------------------- 7. leftovers of a kill
def test_leftovers_of_a_killed_run_are_removed(server: Server, tmp_path: Path):
    pkg = server.package("/k.tar.gz", targz({"K/f.png": image_bytes(9)}))
    out = tmp_path / "out"
    out.mkdir()
    for name in (".shard-00000.tar.x1y2.part", ".index.parquet.abc", ".report.jsonl.q", ".summary.json.z"):
        (out / name).write_bytes(b"half")
    cache = tmp_path / "cache"
    cache.mkdir()
    for name in (".member.abc.part", ".k.tmp"):
        (cache / name).write_bytes(b"half")
    opts = FetchOptions(**FAST, staging=cache)
    fetch_images(urls_file(tmp_path, [row("k", pkg, "K/f.png")]), out, opts)
    assert sorted(p.name for p in cache.iterdir()) == ["k"]  # the figure, kept for the next run
    assert sorted(p.name for p in out.iterdir()) == [
        "fetch.json",
        "index.parquet",
        "report.jsonl",
        "shard-00000.json",
        "shard-00000.tar",
        "summary.json",
    ]


# ---------------------------------------------------------------- 8. links, HTML, nothing fetched, modes
def test_link_members_and_html_pages_are_named_for_what_they_are(server: Server, tmp_path: Path):
    links = server.package("/links.tar.gz", link_package())
    html = server.package("/html.tar.gz", b"<!doctype html><title>Sign in</title>" * 20, "text/html")
    f = urls_file(
        tmp_path,
        [row("sym", links, "L/sym.png"), row("hard", links, "L/hard.png"), row("html", html, "H/f.png")],
    )
    out = tmp_path / "out"
    fetch_images(f, out, FetchOptions(**FAST))
    rep = report(out)
    assert rep["sym"]["reason"] == rep["hard"]["reason"] == "member_is_link"
    assert "/etc/passwd" in rep["sym"]["detail"] and "hard link" in rep["hard"]["detail"]
    assert rep["html"]["reason"] == "not_a_package" and "text/html" in rep["html"]["detail"]


def test_a_run_that_fetches_nothing_exits_non_zero_and_lists_every_figure(server: Server, tmp_path: Path):
    rows = [row(f"gone{i}", f"{server.base}/gone{i}.tar.gz", "x.png") for i in range(5)]
    out = tmp_path / "out"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "vital.cli",
            "fetch-images",
            str(urls_file(tmp_path, rows)),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=120,
    )
    assert r.returncode == 1, r.stderr
    assert "fetched 0 of 5" in r.stderr and "Traceback" not in r.stderr
    assert {x["pair_id"]: x["reason"] for x in read_jsonl(out / "report.jsonl")} == {
        f"gone{i}": "not_found" for i in range(5)
    }


def test_outputs_follow_the_umask(server: Server, tmp_path: Path):
    pkg = server.package("/m.tar.gz", targz({"M/f.png": image_bytes(10)}))
    out = tmp_path / "out"
    code = (
        "import os, sys; os.umask(0o022); from pathlib import Path; from vital.fetch import *; "
        "fetch_images(Path(sys.argv[1]), Path(sys.argv[2]), FetchOptions(workers=1, rate=1000))"
    )
    f = urls_file(tmp_path, [row("m", pkg, "M/f.png")])
    subprocess.run([sys.executable, "-c", code, str(f), str(out)], check=True, cwd=ROOT, timeout=120)
    modes = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()}
    assert modes and set(modes.values()) == {0o644}, modes


# ---------------------------------------------------------------- all of it at once, 8 workers
# Peak RSS from /proc's VmHWM, which belongs to this process's own memory: Linux carries ru_maxrss across
# fork and exec, so it would report a large pytest worker's peak instead.
HOSTILE_CHILD = """
import json, re, sys
from pathlib import Path
from vital.fetch import FetchOptions, fetch_images
opts = FetchOptions(shard_size=8, workers=8, rate=1000, backoff=0.01, timeout=5, retries=1,
                    max_package_bytes=8 << 20, package_s=3)
s = fetch_images(Path(sys.argv[1]), Path(sys.argv[2]), opts)
hwm_kb = int(re.search(r"VmHWM:\\s+(\\d+) kB", Path("/proc/self/status").read_text()).group(1))
print(json.dumps({"maxrss_mb": hwm_kb / 1024, **s}))
"""


def test_hostile_packages_with_8_workers_stay_under_500_mb_and_the_folder_cap(server: Server, tmp_path: Path):
    rows = []
    for i in range(4):
        rows.append(
            row(f"bomb{i}", server.package(f"/bomb{i}.tar.gz", bomb_package("Z/f.png", 200 << 20)), "Z/f.png")
        )
        rows.append(
            row(
                f"sparse{i}",
                server.package(f"/sparse{i}.tar.gz", sparse_package("S/f.png", 3 << 30)),
                "S/f.png",
            )
        )
        rows.append(
            row(
                f"pixels{i}",
                server.package(f"/px{i}.tar.gz", targz({"P/f.png": png_claiming(50_000, 50_000)})),
                "P/f.png",
            )
        )
        server.routes[f"/endless{i}.tar.gz"] = _endless
        rows.append(row(f"endless{i}", f"{server.base}/endless{i}.tar.gz", "E/f.png"))
        server.routes[f"/trickle{i}.tar.gz"] = _trickle
        rows.append(row(f"trickle{i}", f"{server.base}/trickle{i}.tar.gz", "T/f.png"))
        rows.append(
            row(f"good{i}", server.package(f"/good{i}.tar.gz", targz({"G/f.png": image_bytes(i)})), "G/f.png")
        )
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-c", HOSTILE_CHILD, str(urls_file(tmp_path, rows)), str(out)],
        stdout=subprocess.PIPE,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    peak = 0
    while proc.poll() is None:
        peak = max(peak, sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) if out.exists() else 0)
        time.sleep(0.05)
    result = json.loads(proc.stdout.read().decode().splitlines()[-1])
    assert proc.returncode == 0
    print(f"peak RSS {result['maxrss_mb']:.0f} MB, peak folder {peak / 2**20:.1f} MiB, {result['by_reason']}")
    assert result["maxrss_mb"] < 500
    assert peak <= 8 * (8 << 20) + (1 << 20)  # workers x max_package_bytes, plus the shards
    assert result["fetched"] == 4 and result["by_reason"] == {
        "member_too_large": 8,
        "package_timeout": 4,
        "package_too_large": 4,
        "too_many_pixels": 4,
    }
