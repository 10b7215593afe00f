"""The load generator's smoke run: every scenario for about two seconds
against the real server (figures printed, not asserted; a scenario that
fails, or sees a seq gap or duplicate, fails this test)."""

import os
import pathlib
import subprocess

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_every_scenario_runs(roomcast_bin):
    env = dict(os.environ, ROOMCAST_BIN=str(roomcast_bin))
    proc = subprocess.run(
        ["bash", str(REPO / "loadtest" / "smoke.sh")],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=590,
    )
    log = REPO / "target" / "loadtest-smoke.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(proc.stdout)
    assert proc.returncode == 0, f"loadtest smoke failed (log in {log}):\n{proc.stdout[-4000:]}"
    for scenario in ("fanout", "echo", "durable", "connect", "idle"):
        assert f"--- {scenario}" in proc.stdout
