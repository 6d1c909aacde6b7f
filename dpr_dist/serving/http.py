"""The HTTP API and the demo page, on the standard library's ThreadingHTTPServer (no extra
dependency). Every bad request gets a 4xx JSON ``{"error", "field"}``; a 500 means a bug here.

    server = make_server(Recommender.load(ckpt, data), "127.0.0.1", 8000)
    server.serve_forever()
"""

from __future__ import annotations

import json
import logging
import sys
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from .catalogue import MAX_SEARCH_RESULTS
from .errors import RequestError
from .openapi import openapi_document
from .recommender import Recommender
from .request_body import MAX_BODY_BYTES, parse_json_body, recommend_arguments

STATIC_DIR = Path(__file__).with_name("static")
STATIC_FILES = {  # URL path -> (file, content type); nothing else on disk is ever served
    "/": ("index.html", "text/html; charset=utf-8"),
    "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/static/style.css": ("style.css", "text/css; charset=utf-8"),
}
GET_ROUTES = ("/health", "/info", "/openapi.json", "/items/search")
MAX_QUERY_CHARS = 200
log = logging.getLogger("dpr_dist.serving")


class DemoServer(ThreadingHTTPServer):
    daemon_threads = True  # a hung client must not keep the process alive at shutdown

    def __init__(self, address: tuple[str, int], recommender: Recommender, quiet: bool = False) -> None:
        super().__init__(address, Handler)
        self.recommender = recommender
        self.quiet = quiet
        self.static = {path: ((STATIC_DIR / name).read_bytes(), ctype) for path, (name, ctype) in STATIC_FILES.items()}
        self.openapi = json.dumps(openapi_document()).encode()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


def make_server(recommender: Recommender, host: str = "127.0.0.1", port: int = 8000, quiet: bool = False) -> DemoServer:
    """Port 0 picks a free port (see ``server.url``)."""
    return DemoServer((host, port), recommender, quiet)


class Handler(BaseHTTPRequestHandler):
    server: DemoServer
    protocol_version = "HTTP/1.1"  # keep-alive: the load generator and the browser reuse connections

    # --- plumbing -------------------------------------------------------------------------------

    def log_message(self, fmt: str, *args) -> None:
        if not self.server.quiet:
            sys.stderr.write(f"[serve] {self.address_string()} {fmt % args}\n")

    def _send(self, status: int, body: bytes, content_type: str, close: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, payload: dict, close: bool = False) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json", close)

    def _error(self, exc: RequestError, close: bool = False) -> None:
        self._json(exc.status, exc.to_json(), close)

    def _guarded(self, route) -> None:
        try:
            route()
        except RequestError as exc:
            self._error(exc)
        except Exception:  # a bug, not bad input: log it, answer 500 without internals
            log.exception("error while serving %s %s", self.command, self.path)
            self._json(500, {"error": "internal error (see the server log)", "field": "server"})

    # --- routes ---------------------------------------------------------------------------------

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        routes = {
            "/health": lambda: self._json(200, {"status": "ok"}),
            "/info": lambda: self._json(200, self.server.recommender.describe()),
            "/openapi.json": lambda: self._send(200, self.server.openapi, "application/json"),
            "/items/search": lambda: self._search(parts.query),
        }
        if parts.path in self.server.static:
            body, ctype = self.server.static[parts.path]
            self._send(200, body, ctype)
        elif parts.path in routes:
            self._guarded(routes[parts.path])
        elif parts.path == "/recommend":
            self._error(RequestError("method", "use POST /recommend with a JSON body", status=405))
        else:
            self._error(RequestError("path", f"no such endpoint {parts.path!r} (see /openapi.json)", status=404))

    do_HEAD = do_GET

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        if path != "/recommend":
            known = path in self.server.static or path in GET_ROUTES
            # The unread body would be taken for the next request on this connection: close it.
            self._error(RequestError("path", f"no POST endpoint {path!r} (see /openapi.json)",
                                     status=405 if known else 404), close=True)
            return
        self._guarded(self._recommend)

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            raise RequestError("body", "chunked bodies are not accepted: send Content-Length", status=411)
        length = self.headers.get("Content-Length")
        if length is None:
            self.close_connection = True
            raise RequestError("body", "Content-Length header required", status=411)
        try:
            size = int(length)
        except ValueError:
            self.close_connection = True
            raise RequestError("body", f"Content-Length {length!r} is not a number") from None
        if size < 0 or size > MAX_BODY_BYTES:
            # The body is never read: refuse it and drop the connection.
            self.close_connection = True
            raise RequestError("body", f"{size} bytes; the limit is {MAX_BODY_BYTES}", status=413)
        return self.rfile.read(size)

    def _recommend(self) -> None:
        args = recommend_arguments(parse_json_body(self._read_body()))
        rec = self.server.recommender
        self._json(200, rec.recommend(**args).to_json(rec.catalogue))

    def _search(self, query: str) -> None:
        params = parse_qs(query, keep_blank_values=True)
        q = params.get("q", [""])[0]
        if not q.strip():
            raise RequestError("q", "missing or empty: /items/search?q=<part of a title>")
        if len(q) > MAX_QUERY_CHARS:
            raise RequestError("q", f"{len(q)} characters; the limit is {MAX_QUERY_CHARS}")
        raw_limit = params.get("limit", ["20"])[0]
        if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= MAX_SEARCH_RESULTS:
            raise RequestError("limit", f"must be an integer in [1, {MAX_SEARCH_RESULTS}], got {raw_limit!r}")
        results = self.server.recommender.search(q, int(raw_limit))
        self._json(200, {"query": q, "results": [item.to_json() for item in results]})
