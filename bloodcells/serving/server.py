"""A small threaded HTTP server for the page (standard library only: nothing is fetched from
the internet, by the server or by the page). It serves a fixed list of files (the page, its
script and style, the run's report.html) and one JSON API; a bad request gets a 4xx with a
message and the server goes on serving."""

from __future__ import annotations

import json
import logging
import socket
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

from bloodcells.serving.served_model import Limits, ServedModel
from bloodcells.serving.uploads import UploadError, decode_uploads, parse_multipart

log = logging.getLogger(__name__)

PAGE_DIR = Path(__file__).parent / "page"
PAGE_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/style.css": ("style.css", "text/css; charset=utf-8"),
}
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
CHUNK = 1 << 20


class PageServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], served: ServedModel, limits: Limits) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, PageHandler)
        self.served = served
        self.limits = limits

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{'[' + host + ']' if ':' in host else host}:{port}/"


class PageHandler(BaseHTTPRequestHandler):
    server: PageServer
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are two writes: without it each answer waits ~40 ms

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (the base class's name)
        log.info("%s %s", self.address_string(), format % args)

    def send_body(self, status: int, body: bytes, content_type: str, extra: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_json(self, status: int, body: dict) -> None:
        self.send_body(status, json.dumps(body).encode(), "application/json")

    def send_error_message(self, status: int, message: str) -> None:
        """A 4xx/5xx with its message; the connection closes (a refused body may be unread)."""
        self.close_connection = True
        self.send_body(status, json.dumps({"error": message}).encode(), "application/json", {"Connection": "close"})

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        served = self.server.served
        if path in PAGE_FILES:
            name, content_type = PAGE_FILES[path]
            self.send_body(200, (PAGE_DIR / name).read_bytes(), content_type)
        elif path == "/api/info":
            self.send_json(200, {**served.info(), "limits": vars(self.server.limits)})
        elif path == "/report" and served.report is not None:
            self.send_body(200, served.report.read_bytes(), "text/html; charset=utf-8")
        else:
            self.send_error_message(404, f"{path}: not served here (the page is at /)")

    do_HEAD = do_GET

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        try:
            if path != "/api/predict":
                self.drain(self.content_length(required=False) or 0)
                raise UploadError(404, f"{path}: not served here (POST images to /api/predict)")
            body = self.read_body()
            limits = self.server.limits
            uploads = parse_multipart(self.headers.get("Content-Type", ""), body, limits.max_files)
            decoded = decode_uploads(uploads, self.server.served.predictor.image_size, limits.max_pixels)
            if decoded.images is None:
                raise UploadError(400, "no usable image: " + "; ".join(e["error"] for e in decoded.errors))
            answer = self.server.served.score(decoded)
        except UploadError as err:
            self.send_error_message(err.status, str(err))
        except Exception as err:  # the server keeps serving; the user sees what went wrong
            log.exception("predict failed")
            self.send_error_message(500, f"the model failed on this upload: {type(err).__name__}: {err}")
        else:
            self.send_json(200, answer)

    def content_length(self, required: bool = True) -> int | None:
        value = self.headers.get("Content-Length")
        if value is None:
            if required:
                raise UploadError(411, "the upload has no Content-Length")
            return None
        try:
            length = int(value)
        except ValueError:
            raise UploadError(400, f"Content-Length {value!r} is not a number") from None
        if length < 0:
            raise UploadError(400, f"Content-Length {length} is negative")
        return length

    def drain(self, length: int) -> None:
        """Read and drop a body, so the browser reads the answer instead of a reset connection."""
        while length > 0:
            chunk = self.rfile.read(min(CHUNK, length))
            if not chunk:
                break
            length -= len(chunk)

    def read_body(self) -> bytes:
        length = self.content_length()
        cap = int(self.server.limits.max_upload_mb * (1 << 20))
        if length > cap:
            self.drain(length)
            raise UploadError(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"upload of {length / (1 << 20):.1f} MB is larger than the {self.server.limits.max_upload_mb:g} MB "
                "taken here (max_upload_mb)",
            )
        if length == 0:
            raise UploadError(400, "empty upload: choose or drop at least one image")
        body = self.rfile.read(length)
        if len(body) < length:
            raise UploadError(400, f"the upload ended after {len(body)} of {length} bytes")
        return body


def make_server(
    served: ServedModel, host: str = "127.0.0.1", port: int = 8000, limits: Limits | None = None
) -> PageServer:
    """A server bound to ``host:port`` (port 0: any free port); warns when it is reachable
    from other machines, since the page has no authentication."""
    if host not in LOCAL_HOSTS:
        log.warning("serving on %s: the page has no authentication; anyone who can reach this machine can use it", host)
    return PageServer((host, port), served, limits or Limits())
