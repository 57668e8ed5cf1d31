"""The annotation web server: one page, a small JSON API, the figure images. Standard library only.

Routes: ``GET /`` the page; ``GET /api/task`` the next figure (``{"task": null}`` when all are ranked);
``POST /api/label`` ``{pair_id, ranking, ties}``; ``POST /api/skip`` ``{pair_id}``; ``POST /api/revisit``
(offer the skipped figures again); ``GET /image/<pair_id>``. Errors come back as ``{"error": message}``
with status 400 (bad ranking), 404 (unknown figure), 409 (already ranked), 415 (not JSON, or from
another site: a page elsewhere cannot post labels) or 500 (the label file cannot be written).
"""

from __future__ import annotations

import json
import mimetypes
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.resources import files
from urllib.parse import unquote, urlsplit

from vital.annotate.session import AnnotationError, AnnotationSession

MAX_BODY = 1 << 20


def page() -> bytes:
    return files("vital.annotate").joinpath("page.html").read_bytes()


def make_handler(session: AnnotationSession) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "vital-annotate"

        def log_message(self, format, *args):  # noqa: A002 - the base class's name
            pass  # one line per image request drowns the terminal; errors still reach the page

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, obj: object) -> None:
            self._send(status, json.dumps(obj).encode("utf-8"), "application/json")

        def _body(self) -> object:
            if self.headers.get_content_type() != "application/json":
                raise AnnotationError("POST a JSON body (Content-Type: application/json)", 415)
            origin = self.headers.get("Origin")
            if origin and urlsplit(origin).netloc != self.headers.get("Host"):
                raise AnnotationError(
                    f"requests from {origin} are refused: post from the annotation page", 415
                )
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                raise AnnotationError("Content-Length is not a number") from None
            if not 0 <= length <= MAX_BODY:
                raise AnnotationError(f"request body of {length} bytes: expected 0 to {MAX_BODY}")
            try:
                return json.loads(self.rfile.read(length) or b"null")
            except json.JSONDecodeError as e:
                raise AnnotationError(f"request body is not JSON ({e.msg})") from None

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            if self.path in ("/", "/index.html"):
                self._send(HTTPStatus.OK, page(), "text/html; charset=utf-8")
            elif self.path == "/api/task":
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
            elif self.path.startswith("/image/"):
                try:
                    path = session.image_path(unquote(self.path[len("/image/") :]))
                    body = path.read_bytes()
                except (AnnotationError, OSError) as e:
                    self._json(HTTPStatus.NOT_FOUND, {"error": str(e)})
                    return
                self._send(
                    HTTPStatus.OK, body, mimetypes.guess_type(path.name)[0] or "application/octet-stream"
                )
            else:
                self._json(HTTPStatus.NOT_FOUND, {"error": f"no route {self.path}"})

        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            try:
                body = self._body()
                if self.path == "/api/label":
                    self._json(HTTPStatus.OK, {"progress": session.submit(body)})
                elif self.path == "/api/skip":
                    session.skip(str(body.get("pair_id")) if isinstance(body, dict) else "")
                    self._json(HTTPStatus.OK, {"progress": session.progress()})
                elif self.path == "/api/revisit":
                    session.revisit_skipped()
                    self._json(HTTPStatus.OK, {"progress": session.progress()})
                else:
                    self._json(HTTPStatus.NOT_FOUND, {"error": f"no route {self.path}"})
            except AnnotationError as e:
                self._json(e.status, {"error": str(e)})
            except OSError as e:
                self._json(
                    HTTPStatus.INTERNAL_SERVER_ERROR,
                    {"error": f"cannot write {session.label_file}: {e.strerror or e}; nothing was saved"},
                )

    return Handler


def make_server(session: AnnotationSession, host: str = "127.0.0.1", port: int = 8765) -> ThreadingHTTPServer:
    """A server bound to ``host:port`` (port 0 picks a free one); call ``serve_forever()`` on it."""
    server = ThreadingHTTPServer((host, port), make_handler(session))
    server.daemon_threads = True
    return server
