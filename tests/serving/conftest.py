"""A served tiny model (conformal calibration and a foreign-image score stored) on a free
port in this process, with a client (``tests.helpers.page_client``)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from bloodcells.runs.serve import build_server
from tests.helpers import calibrated_checkpoint, compose_config
from tests.helpers.page_client import Client


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
