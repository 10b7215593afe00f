"""Runs the Node `ws` client tests (tests/node) against a server started here."""

import os
import pathlib
import subprocess

import pytest

from helpers import mint_token, node_or_skip

NODE_DIR = pathlib.Path(__file__).resolve().parents[1] / "node"


@pytest.mark.timeout(90)
def test_node_ws_client(start_server, room):
    node = node_or_skip(NODE_DIR)
    srv = start_server("--send-rate", "0")
    env = dict(os.environ)
    env.update(
        ROOMCAST_WS_URL=f"{srv.ws_base}/v1/ws",
        ROOMCAST_TOKEN=mint_token("node-a"),
        ROOMCAST_TOKEN2=mint_token("node-b"),
        ROOMCAST_ROOM=room,
    )
    files = sorted(str(p.name) for p in NODE_DIR.glob("*.test.js"))
    assert files, "no tests in tests/node"
    r = subprocess.run([node, "--test", "--test-reporter=spec", *files], cwd=NODE_DIR, env=env,
                       capture_output=True, text=True, timeout=80)
    assert r.returncode == 0, f"node --test failed:\n{r.stdout[-6000:]}\n{r.stderr[-3000:]}"
