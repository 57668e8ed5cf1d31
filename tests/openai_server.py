"""A real OpenAI-compatible HTTP server on 127.0.0.1 for tests and the benchmark.

The ``openai`` 3.x SDK sends through ``httpx2``, which ``respx`` cannot intercept, so the engine is
tested end to end against this server. It implements the endpoints the engine uses
(chat completions, files, batches, models), keeps a request log, enforces an optional
requests-per-minute budget with ``x-ratelimit-*`` headers, and injects faults on demand:

    server.script.extend(["429", "500", "slow", "malformed", "bad_content", "length", "404", "405"])

Each chat request pops the next fault from ``script`` (an empty script means a normal answer);
``fault_fn(n, body)`` may return a fault instead. ``die_after`` stops the server after that many
chat requests (later requests get connection refused). Any other HTTP status as a string ("404",
"405", ...) is answered with that status. ``advertise_limits = False`` leaves the ``x-ratelimit-*``
headers out (a server or proxy that enforces a limit without saying so); ``batch_api = False``
answers the Batch API's upload and create with 405 (a server without ``/v1/files``).

Two more limits: ``window_limit`` requests per fixed ``window_s`` window (a per-minute limit as
providers count it: once the window's budget is spent every request is refused until the next
window, with ``retry-after`` the time left in it unless ``window_retry_after`` is False), and
``only_429 = True``, a server that answers every chat request 429.
"""

from __future__ import annotations

import hashlib
import json
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def body_key(body: dict) -> str:
    """The same content address the engine uses for a chat request (sha256 of canonical JSON)."""
    canon = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canon.encode()).hexdigest()


PAPER_JUDGE = json.dumps("[Context]\nFigure caption:")[1:-1]  # how a paper-structure judge request starts


def default_content(body: dict) -> str:
    """A valid generated conversation, or a judge score when the prompt asks for one."""
    text = json.dumps(body.get("messages", []))
    if "score" in text and "rubric" in text.lower():
        return json.dumps({"score": 7, "rationale": "accurate and specific"})
    if PAPER_JUDGE in text:  # the paper structure's judge: the score alone on the first line
        return "7\nAccurate and specific."
    seed = body.get("seed", 0)
    return json.dumps(
        {
            "conversations": [
                {"from": "human", "value": f"What imaging modality is shown? ({seed})"},
                {"from": "gpt", "value": "This is an axial CT image of the abdomen."},
                {"from": "human", "value": "Is there a focal lesion?"},
                {"from": "gpt", "value": "Yes, a hypodense lesion is visible in the left lobe."},
            ]
        }
    )


class _Server(ThreadingHTTPServer):
    allow_reuse_address = True
    request_queue_size = 256  # the default backlog of 5 refuses connections under a concurrent client
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        # A client that gives up (the engine's timeout, a closed pool) resets the socket; socketserver's
        # default prints that traceback to stderr, where the stage tests look for tracebacks of vital's own.
        if isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            return
        super().handle_error(request, client_address)


class _State:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.log: list[dict] = []
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict] = {}
        self.chat_count = 0
        self.tokens = 0.0
        self.last_refill = time.monotonic()
        self.window_start = time.monotonic()
        self.window_used = 0


class FakeOpenAIServer:
    """Start with ``with FakeOpenAIServer() as s:``; ``s.base_url`` ends in ``/v1``."""

    def __init__(
        self,
        port: int = 0,
        latency: float = 0.0,
        rpm: int | None = None,
        content_fn: Callable[[dict], str] = default_content,
        batch_polls: int = 1,
    ) -> None:
        self.port = port
        self.latency = latency
        self.rpm = rpm
        self.content_fn = content_fn
        self.script: deque[Any] = deque()
        self.fault_fn: Callable[[int, dict], Any] | None = None
        self.die_after: int | None = None
        self.slow_s = 5.0
        self.retry_after_s = "0.2"
        self.batch_polls = batch_polls
        self.batch_fail_keys: set[str] = set()
        self.batch_expire_keys: set[str] = set()
        self.batch_fail_first_n = 0  # the first batch fails this many of its lines
        self.advertise_limits = True
        self.batch_api = True
        self.window_limit: int | None = None
        self.window_s = 60.0
        self.window_retry_after = True
        self.only_429 = False
        self.state = _State()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> FakeOpenAIServer:
        handler = _make_handler(self)
        self._httpd = _Server(("127.0.0.1", self.port), handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self.state.tokens = float(self._burst())
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05})
        self._thread.daemon = True
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            httpd, self._httpd = self._httpd, None
            threading.Thread(target=lambda: (httpd.shutdown(), httpd.server_close())).start()
            if self._thread is not None and threading.current_thread() is not self._thread:
                self._thread.join(timeout=5)

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # ------------------------------------------------------------------ request log
    @property
    def log(self) -> list[dict]:
        with self.state.lock:
            return list(self.state.log)

    def completed_keys(self) -> list[str]:
        """Keys of chat requests answered with a usable 200 response, in order (repeats kept)."""
        return [e["key"] for e in self.log if e["path"] == "chat" and e["status"] == 200 and e["ok"]]

    def chat_requests(self) -> list[dict]:
        return [e for e in self.log if e["path"] == "chat"]

    # ------------------------------------------------------------------ rate limit
    def _burst(self) -> float:
        return max(1.0, (self.rpm or 0) / 60.0)

    def _take_request_slot(self) -> tuple[bool, float]:
        """Token bucket with one second of burst; returns (allowed, remaining)."""
        if not self.rpm:
            return True, 1e9
        st = self.state
        with st.lock:
            now = time.monotonic()
            st.tokens = min(self._burst(), st.tokens + (now - st.last_refill) * self.rpm / 60.0)
            st.last_refill = now
            if st.tokens >= 1.0 - 1e-9:
                st.tokens -= 1.0
                return True, st.tokens
            return False, st.tokens

    def _take_window_slot(self) -> tuple[bool, float, float]:
        """Fixed-window budget: (allowed, remaining in the window, seconds until the next window)."""
        st = self.state
        with st.lock:
            now = time.monotonic()
            if now - st.window_start >= self.window_s:
                st.window_start += (now - st.window_start) // self.window_s * self.window_s
                st.window_used = 0
            left = st.window_start + self.window_s - now
            if st.window_used < (self.window_limit or 0):
                st.window_used += 1
                return True, self.window_limit - st.window_used, left
            return False, 0, left

    def ratelimit_headers(self, remaining: float) -> dict[str, str]:
        if not self.rpm or not self.advertise_limits:
            return {}
        return {
            "x-ratelimit-limit-requests": str(self.rpm),
            "x-ratelimit-remaining-requests": str(max(0, int(remaining))),
            "x-ratelimit-reset-requests": f"{60.0 / self.rpm:.3f}s",
            "x-ratelimit-limit-tokens": "10000000",
            "x-ratelimit-remaining-tokens": "10000000",
            "x-ratelimit-reset-tokens": "0s",
        }

    # ------------------------------------------------------------------ responses
    def completion(self, body: dict, content: str, finish_reason: str = "stop") -> dict:
        prompt_tokens = max(1, len(json.dumps(body.get("messages", []))) // 4)
        return {
            "id": f"chatcmpl-{body_key(body)[:12]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "test-model"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": finish_reason,
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": max(1, len(content) // 4),
                "total_tokens": prompt_tokens + max(1, len(content) // 4),
            },
        }

    def run_batch(self, batch: dict) -> None:
        """Answer every line of the batch input file; some may be made to fail or expire."""
        lines = self.state.files[batch["input_file_id"]].decode().splitlines()
        out, err = [], []
        fail_n, self.batch_fail_first_n = self.batch_fail_first_n, 0
        fail_now = self.batch_fail_keys | {json.loads(x)["custom_id"] for x in lines[:fail_n]}
        for line in lines:
            if not line.strip():
                continue
            req = json.loads(line)
            cid = req["custom_id"]
            if cid in self.batch_expire_keys:
                continue
            if cid in fail_now:
                err.append(
                    {
                        "id": f"r-{cid[:8]}",
                        "custom_id": cid,
                        "response": None,
                        "error": {"code": "server_error", "message": "boom"},
                    }
                )
                continue
            comp = self.completion(req["body"], self.content_fn(req["body"]))
            with self.state.lock:
                self.state.log.append(
                    {"path": "batch_line", "key": body_key(req["body"]), "status": 200, "ok": True}
                )
            out.append(
                {
                    "id": f"r-{cid[:8]}",
                    "custom_id": cid,
                    "response": {"status_code": 200, "request_id": "x", "body": comp},
                    "error": None,
                }
            )
        out.reverse()  # the API does not promise input order
        batch["output_file_id"] = self._store("\n".join(json.dumps(o) for o in out).encode()) if out else None
        batch["error_file_id"] = self._store("\n".join(json.dumps(e) for e in err).encode()) if err else None
        batch["status"] = (
            "expired"
            if self.batch_expire_keys & {json.loads(x)["custom_id"] for x in lines if x.strip()}
            else "completed"
        )
        batch["request_counts"] = {"total": len(lines), "completed": len(out), "failed": len(err)}

    def _store(self, data: bytes) -> str:
        with self.state.lock:
            fid = f"file-{len(self.state.files) + 1}"
            self.state.files[fid] = data
        return fid


def _make_handler(server: FakeOpenAIServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # quiet
            pass

        def _send(
            self,
            status: int,
            payload: bytes | dict,
            headers: dict | None = None,
            ctype: str = "application/json",
        ) -> None:
            data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            try:
                self.wfile.write(data)
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                pass

        def _body(self) -> bytes:
            n = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(n) if n else b""

        def do_GET(self) -> None:
            path = self.path.split("?")[0]
            if path.endswith("/models"):
                return self._send(
                    200,
                    {
                        "object": "list",
                        "data": [{"id": "test-model", "object": "model", "created": 0, "owned_by": "test"}],
                    },
                )
            if "/files/" in path and path.endswith("/content"):
                fid = path.split("/files/")[1].split("/")[0]
                data = server.state.files.get(fid)
                if data is None:
                    return self._send(404, {"error": {"message": f"no file {fid}"}})
                return self._send(200, data, ctype="application/octet-stream")
            if "/batches/" in path:
                bid = path.split("/batches/")[1]
                batch = server.state.batches.get(bid)
                if batch is None:
                    return self._send(404, {"error": {"message": f"no batch {bid}"}})
                with server.state.lock:
                    server.state.log.append({"path": "batch_retrieve", "key": bid, "status": 200, "ok": True})
                batch["_polls"] += 1
                if batch["status"] == "in_progress" and batch["_polls"] >= server.batch_polls:
                    server.run_batch(batch)
                return self._send(200, {k: v for k, v in batch.items() if not k.startswith("_")})
            return self._send(404, {"error": {"message": f"unknown path {path}"}})

        def do_POST(self) -> None:
            path = self.path.split("?")[0]
            raw = self._body()
            if path.endswith("/chat/completions"):
                return self._chat(json.loads(raw or b"{}"))
            if not server.batch_api and (path.endswith("/files") or path.endswith("/batches")):
                with server.state.lock:
                    server.state.log.append(
                        {"path": "batch_refused", "key": path, "status": 405, "ok": False}
                    )
                return self._send(405, {"error": {"message": "Method Not Allowed"}})
            if path.endswith("/files"):
                return self._upload(raw)
            if path.endswith("/batches"):
                req = json.loads(raw)
                bid = f"batch-{len(server.state.batches) + 1}"
                batch = {
                    "id": bid,
                    "object": "batch",
                    "endpoint": req["endpoint"],
                    "input_file_id": req["input_file_id"],
                    "completion_window": req["completion_window"],
                    "status": "in_progress",
                    "created_at": int(time.time()),
                    "output_file_id": None,
                    "error_file_id": None,
                    "_polls": 0,
                }
                server.state.batches[bid] = batch
                with server.state.lock:
                    server.state.log.append({"path": "batch_create", "key": bid, "status": 200, "ok": True})
                return self._send(200, {k: v for k, v in batch.items() if not k.startswith("_")})
            return self._send(404, {"error": {"message": f"unknown path {path}"}})

        def _upload(self, raw: bytes) -> None:
            msg = BytesParser(policy=HTTP).parsebytes(
                b"Content-Type: " + self.headers["Content-Type"].encode() + b"\r\n\r\n" + raw
            )
            data = b""
            for part in msg.iter_parts():
                if part.get_param("name", header="content-disposition") == "file":
                    data = part.get_payload(decode=True)
            fid = server._store(data)
            with server.state.lock:
                server.state.log.append({"path": "file_upload", "key": fid, "status": 200, "ok": True})
            self._send(
                200,
                {
                    "id": fid,
                    "object": "file",
                    "bytes": len(data),
                    "created_at": int(time.time()),
                    "filename": "batch.jsonl",
                    "purpose": "batch",
                    "status": "processed",
                },
            )

        def _chat(self, body: dict) -> None:
            st = server.state
            with st.lock:
                st.chat_count += 1
                n = st.chat_count
            fault = server.script.popleft() if server.script else None
            if fault is None and server.fault_fn is not None:
                fault = server.fault_fn(n, body)
            entry = {
                "path": "chat",
                "key": body_key(body),
                "n": n,
                "t": time.monotonic(),
                "status": 200,
                "ok": False,
                "fault": fault,
            }
            allowed, remaining = server._take_request_slot()
            headers = server.ratelimit_headers(remaining)
            retry_after = server.retry_after_s
            if server.window_limit and fault is None and allowed and not server.only_429:
                allowed, left_n, left_s = server._take_window_slot()
                if server.advertise_limits:
                    headers = {
                        "x-ratelimit-limit-requests": str(round(server.window_limit * 60 / server.window_s)),
                        "x-ratelimit-remaining-requests": str(left_n),
                        "x-ratelimit-reset-requests": f"{left_s:.3f}s",
                    }
                if server.window_retry_after:
                    retry_after = f"{left_s:.3f}"
            try:
                if server.die_after is not None and n > server.die_after:
                    entry["status"] = 0
                    server.stop()
                    self.close_connection = True
                    return
                if not allowed or fault == "429" or server.only_429:
                    entry["status"] = 429
                    return self._send(
                        429,
                        {"error": {"message": "rate limited", "type": "requests"}},
                        {**headers, **({"retry-after": retry_after} if retry_after is not None else {})},
                    )
                if fault == "401":
                    entry["status"] = 401
                    auth = self.headers.get("Authorization", "")
                    return self._send(
                        401,
                        {
                            "error": {
                                "message": f"Incorrect API key provided: {auth[7:]}",
                                "type": "invalid_request_error",
                            }
                        },
                    )
                if fault in ("500", "503"):
                    entry["status"] = int(fault)
                    return self._send(int(fault), {"error": {"message": "server error"}})
                if fault == "quota":
                    entry["status"] = 429
                    return self._send(
                        429,
                        {
                            "error": {
                                "message": "You exceeded your current quota.",
                                "type": "insufficient_quota",
                                "code": "insufficient_quota",
                            }
                        },
                    )
                if fault == "404":
                    entry["status"] = 404
                    model = body.get("model")
                    return self._send(
                        404,
                        {
                            "error": {
                                "message": f"The model `{model}` does not exist or you do not have access to it.",
                                "type": "invalid_request_error",
                                "code": "model_not_found",
                            }
                        },
                    )
                if isinstance(fault, str) and fault.isdigit():
                    entry["status"] = int(fault)
                    return self._send(int(fault), {"error": {"message": f"refused ({fault})"}})
                time.sleep(server.slow_s if fault == "slow" else server.latency)
                if fault == "malformed":
                    return self._send(200, b'{"id": "x", "choices": [', headers)
                content = "I cannot produce that." if fault == "bad_content" else server.content_fn(body)
                finish = "length" if fault == "length" else "stop"
                entry["ok"] = fault != "slow"
                self._send(200, server.completion(body, content, finish), headers)
            finally:
                with st.lock:
                    st.log.append(entry)

    return Handler


def main() -> None:
    """Serve from a separate process (the benchmark keeps server threads off the client's GIL)."""
    import argparse

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--rpm", type=int, default=0)
    ap.add_argument("--seconds", type=float, default=1800, help="stop by itself after this long")
    ap.add_argument("--window-limit", type=int, default=0, help="requests per fixed window (0: none)")
    ap.add_argument("--window-s", type=float, default=60.0)
    ap.add_argument("--no-advertise", action="store_true", help="leave the x-ratelimit-* headers out")
    ap.add_argument("--retry-after", default="0.2", help="retry-after of a 429; 'none' to send none")
    ap.add_argument("--window-retry-after", action="store_true", help="a window 429 says when it reopens")
    args = ap.parse_args()
    server = FakeOpenAIServer(port=args.port, latency=args.latency, rpm=args.rpm or None)
    server.window_limit, server.window_s = args.window_limit or None, args.window_s
    server.advertise_limits = not args.no_advertise
    server.retry_after_s = None if args.retry_after == "none" else args.retry_after
    server.window_retry_after = args.window_retry_after
    server.start()
    print(server.port, flush=True)
    deadline = time.monotonic() + args.seconds
    try:
        while time.monotonic() < deadline:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    statuses = [e["status"] for e in server.chat_requests()]
    print(json.dumps({"chat": len(statuses), "429": statuses.count(429)}), flush=True)
    server.stop()


if __name__ == "__main__":
    main()
