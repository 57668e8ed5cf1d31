"""The annotation web server: one page, a small JSON API, the figure images. Standard library only.

Routes (query strings are ignored): ``GET /`` the page; ``GET /api/task`` the next figure
(``{"task": null}`` when all are ranked); ``GET /api/task/<pair_id>`` one figure with its saved ranking
(to correct it); ``GET /api/saved`` the figures ranked so far; ``POST /api/label``
``{pair_id, ranking, ties, correction}``; ``POST /api/skip`` ``{pair_id}``; ``POST /api/revisit`` (offer
the skipped figures again); ``GET /image/<pair_id>``. Errors come back as ``{"error": message}`` with
status 400 (bad ranking or body), 403 (a Host or Origin that is not this server), 404 (unknown figure),
408 (the body did not arrive in time), 409 (already ranked), 411 (no Content-Length), 415 (not JSON) or
500 (the label file cannot be written).

There is no login. Every request must name this server in its ``Host`` header (127.0.0.1, localhost,
the ``--host`` address, or the address it arrived on), so a page on another site cannot reach it through a
DNS name it rebinds to 127.0.0.1; a POST from a browser must also come from this server's own origin.
"""

from __future__ import annotations

import base64
import hashlib
import json
import mimetypes
import re
import socket
import sys
from functools import cache
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.resources import files
from urllib.parse import unquote, urlsplit

from vital.annotate.session import AnnotationError, AnnotationSession

MAX_BODY = 1 << 20
READ_TIMEOUT_S = 10.0
WILDCARD = ("0.0.0.0", "")


@cache
def page() -> bytes:
    return files("vital.annotate").joinpath("page.html").read_bytes()


@cache
def content_security_policy() -> str:
    """Only the page's own inline script and style (by hash), images from here or an http(s) URL, and
    requests back to this server; no framing, no forms, no plugins."""

    def hashes(tag: str) -> str:
        blocks = re.findall(rf"<{tag}>(.*?)</{tag}>".encode(), page(), re.S)
        return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(b).digest()).decode()}'" for b in blocks)

    return (
        f"default-src 'none'; script-src {hashes('script')}; style-src {hashes('style')}; "
        "img-src 'self' http: https:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    )


def public_address() -> str:
    """An address of this machine that others on the network can open (best effort, sends nothing)."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("192.0.2.1", 9))  # TEST-NET-1: only picks the outgoing interface
        return probe.getsockname()[0]
    except OSError:
        return socket.gethostname()
    finally:
        probe.close()


def host_names(host: str) -> set[str]:
    """The names a request may use for a server bound to ``host``."""
    names = {"127.0.0.1", "localhost", host.lower()} - set(WILDCARD)
    if host in WILDCARD:
        names |= {socket.gethostname().lower(), socket.getfqdn().lower(), public_address()}
    return names


def make_handler(session: AnnotationSession) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "vital-annotate"
        timeout = READ_TIMEOUT_S  # seconds a client may stay silent (request line, headers, body)

        def log_message(self, format, *args):  # noqa: A002 - the base class's name
            pass  # one line per image request drowns the terminal; errors still reach the page

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("Content-Security-Policy", content_security_policy())
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("X-Frame-Options", "DENY")
            self.send_header("Referrer-Policy", "no-referrer")
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, obj: object) -> None:
            self._send(status, json.dumps(obj).encode("utf-8"), "application/json")

        def _allowed(self) -> set[str]:
            port = self.server.server_address[1]
            names = self.server.host_names | {self.connection.getsockname()[0]}
            return {f"{name}:{port}" for name in names}

        def _check_host(self) -> None:
            """Refuse a Host (and, when sent, an Origin) that is not this server: DNS rebinding."""
            allowed = self._allowed()
            where = f"open http://127.0.0.1:{self.server.server_address[1]}/ or the address vital annotate printed"
            host = (self.headers.get("Host") or "").strip().lower()
            if host not in allowed:
                raise AnnotationError(
                    f"Host {host or '(none)'!r} is not this annotation server; {where}", 403
                )
            origin = self.headers.get("Origin")
            if origin is not None:
                parts = urlsplit(origin.strip().lower())
                if parts.scheme != "http" or parts.netloc not in allowed:
                    raise AnnotationError(
                        f"requests from {origin} are refused: post from the annotation page ({where})", 403
                    )

        def _body(self) -> object:
            if self.headers.get_content_type() != "application/json":
                raise AnnotationError("POST a JSON body (Content-Type: application/json)", 415)
            if self.headers.get("Transfer-Encoding"):
                raise AnnotationError("send the body with a Content-Length, not chunked", 411)
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                raise AnnotationError("Content-Length is not a number") from None
            if not 0 <= length <= MAX_BODY:
                raise AnnotationError(f"request body of {length} bytes: expected 0 to {MAX_BODY}")
            try:
                data = self.rfile.read(length)
            except TimeoutError:
                self.close_connection = True
                raise AnnotationError(
                    f"request body: fewer than the {length} bytes of its Content-Length arrived within "
                    f"{self.timeout:g} s; nothing was saved",
                    408,
                ) from None
            if len(data) < length:
                self.close_connection = True
                raise AnnotationError(
                    f"request body ended after {len(data)} of the {length} bytes of its Content-Length; "
                    "nothing was saved"
                )
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as e:
                raise AnnotationError(f"request body is not UTF-8 (byte {e.start + 1} of {length})") from None
            try:
                return json.loads(text or "null")
            except json.JSONDecodeError as e:
                raise AnnotationError(f"request body is not JSON ({e.msg})") from None
            except RecursionError:  # Python's JSON decoder recurses once per nested array or object
                raise AnnotationError(
                    "request body nests arrays or objects too deeply to be a ranking"
                ) from None

        def _route(self) -> str:
            return urlsplit(self.path).path

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            try:
                self._check_host()
                self._get(self._route())
            except AnnotationError as e:
                self._json(e.status, {"error": str(e)})

        def _get(self, route: str) -> None:
            if route in ("/", "/index.html"):
                self._send(HTTPStatus.OK, page(), "text/html; charset=utf-8")
            elif route == "/api/task":
                task = session.next_task()
                self._json(
                    HTTPStatus.OK,
                    {
                        "annotator": session.annotator,
                        "label_file": str(session.label_file),
                        "progress": session.progress(),
                        "task": task.as_json() if task else None,
                    },
                )
            elif route.startswith("/api/task/"):
                pair_id = unquote(route[len("/api/task/") :])
                task = session.task(pair_id)
                saved = {r["pair_id"]: r for r in session.saved_rankings()}.get(pair_id)
                self._json(
                    HTTPStatus.OK,
                    {
                        "annotator": session.annotator,
                        "label_file": str(session.label_file),
                        "progress": session.progress(),
                        "task": task.as_json(),
                        "saved": saved,
                    },
                )
            elif route == "/favicon.ico":
                self._send(HTTPStatus.NO_CONTENT, b"", "image/x-icon")  # browsers ask; nothing to show
            elif route == "/api/saved":
                self._json(HTTPStatus.OK, {"saved": session.saved_rankings()})
            elif route.startswith("/image/"):
                try:
                    body, name = session.image(unquote(route[len("/image/") :]))
                except (AnnotationError, OSError) as e:
                    self._json(HTTPStatus.NOT_FOUND, {"error": str(e)})
                    return
                self._send(HTTPStatus.OK, body, mimetypes.guess_type(name)[0] or "application/octet-stream")
            else:
                self._json(HTTPStatus.NOT_FOUND, {"error": f"no route {route}"})

        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            route = self._route()
            try:
                self._check_host()
                body = self._body()
                if route == "/api/label":
                    self._json(HTTPStatus.OK, {"progress": session.submit(body)})
                elif route == "/api/skip":
                    session.skip(str(body.get("pair_id")) if isinstance(body, dict) else "")
                    self._json(HTTPStatus.OK, {"progress": session.progress()})
                elif route == "/api/revisit":
                    session.revisit_skipped()
                    self._json(HTTPStatus.OK, {"progress": session.progress()})
                else:
                    self._json(HTTPStatus.NOT_FOUND, {"error": f"no route {route}"})
            except AnnotationError as e:
                self._json(e.status, {"error": str(e)})
            except OSError as e:
                self._json(
                    HTTPStatus.INTERNAL_SERVER_ERROR,
                    {"error": f"cannot write {session.label_file}: {e.strerror or e}; nothing was saved"},
                )

    return Handler


class AnnotationServer(ThreadingHTTPServer):
    daemon_threads = True
    host_names: set[str]

    def handle_error(self, request, client_address) -> None:
        # A browser that closes a tab mid-request resets the socket: nothing was lost, so no traceback.
        if isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError, TimeoutError)):
            return
        super().handle_error(request, client_address)


def make_server(
    session: AnnotationSession,
    host: str = "127.0.0.1",
    port: int = 8765,
    read_timeout: float = READ_TIMEOUT_S,
) -> AnnotationServer:
    """A server bound to ``host:port`` (port 0 picks a free one); call ``serve_forever()`` on it.

    ``read_timeout``: seconds a client may stay silent mid-request before it is answered 408 and dropped.
    """
    handler = make_handler(session)
    handler.timeout = read_timeout
    server = AnnotationServer((host, port), handler)
    server.host_names = host_names(host)
    return server
