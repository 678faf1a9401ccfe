"""A served tiny model (conformal calibration and a foreign-image score stored) on a free
port in this process, and a small HTTP client that sends files as a browser form does."""

from __future__ import annotations

import http.client
import json
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from bloodcells.runs.serve import build_server
from tests.helpers import calibrated_checkpoint, compose_config


def multipart(files: list[tuple[str, bytes]]) -> tuple[bytes, str]:
    """A ``multipart/form-data`` body with one ``files`` field per (name, bytes)."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, data in files:
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        )
        parts.append(head.encode() + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


@dataclass
class Client:
    host: str
    port: int

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        conn = http.client.HTTPConnection(self.host, self.port, timeout=120)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, response.getheader("Content-Type", ""), response.read()
        finally:
            conn.close()

    def get_json(self, path: str) -> tuple[int, dict]:
        status, _, body = self.request("GET", path)
        return status, json.loads(body)

    def post_files(self, files: list[tuple[str, bytes]]) -> tuple[int, dict]:
        body, content_type = multipart(files)
        status, _, answer = self.request("POST", "/api/predict", body, {"Content-Type": content_type})
        return status, json.loads(answer)

    def alive(self) -> bool:
        status, info = self.get_json("/api/info")
        return status == 200 and "classes" in info


def start(ckpt: Path, *overrides: str) -> tuple:
    cfg = compose_config("serve", [f"ckpt_path={ckpt}", "port=0", "backend=torch", *overrides], ckpt.parent)
    server = build_server(cfg)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    return server, Client(host, port)


@pytest.fixture
def serve_checkpoint():
    """Start a server for a checkpoint (``serve_checkpoint(path, *overrides)`` -> client);
    every server started is shut down after the test."""
    servers = []

    def serve(ckpt: Path, *overrides: str) -> Client:
        server, client = start(ckpt, *overrides)
        servers.append(server)
        return client

    yield serve
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(checkpoint path, client) of a server that runs for the module's tests."""
    ckpt, _ = calibrated_checkpoint(tmp_path_factory.mktemp("served") / "run" / "checkpoints" / "m.ckpt")
    server, client = start(ckpt)
    yield ckpt, client
    server.shutdown()
    server.server_close()
