"""A small HTTP client for the served page that sends files as a browser form does."""

from __future__ import annotations

import http.client
import json
import uuid
from dataclasses import dataclass


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
