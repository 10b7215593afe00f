"""Hostile load: `roomcast-loadtest attack` against the real server.

One server (`--threads 1 --send-rate 0 --room-idle-timeout 1s
--store-cache-bytes 1MiB`) takes every attack of the scenario
in turn (slowloris, half-open connections, silent upgrades, garbage and
header bombs, slow consumers, descriptor exhaustion, message floods,
fragment floods), each from its own 127.0.0.x source addresses, while two
healthy clients from 127.0.0.1 ping and send in a room of their own.

Asserted (functional outcomes only):
- the healthy clients saw no error frame, close, disconnect, seq gap or lost
  reply, in any attack's calm, attack or settle window, nor outside them;
- the server is still up: `/healthz` answers 200 after each attack and at the end;
- the server's RSS and open descriptors came back to within 20 % of their
  level before each attack. The server keeps some memory by design: each
  loaded room's tail (up to `--history-tail` messages) and the store's page
  cache (up to `--store-cache-bytes`, which fills as the slow-consumers
  attack's 16 KiB messages are stored: 4 MiB of it alone is a fifth of the
  server's RSS, so the smallest cache is used). With rooms forgotten after
  1 s idle and the smallest page cache, what is left after an attack is what
  the attack left behind, not those caches. One more cache fills only once:
  the store readers' first history reads give each of them an allocator arena
  and fill the page cache from it. A first message flood leaves about 3.4 MiB
  of it (a sixth of the RSS: +18 %), a second one 0.3 MiB and a third 0.1 MiB.
  So a short message flood is run first, unmeasured, and the scenario's
  figures are the growth past that warm state; it must leave the server
  healthy like any other attack.

Latency figures (the healthy ping p99 during each attack against the calm p99
just before it, the goal p99 <= 2 x calm + 5 ms) are REPORTED, NOT ASSERTED:
this machine is a small shared box and timing assertions would be noise. They
are printed with the table and kept in target/e2e-logs/attack.json; the full
run with the figures is `roomcast-loadtest attack` (loadtest/README.md).

The load generator is not built here: `scripts/test.sh` builds it with
`cargo build --release --workspace`, next to the roomcast binary.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess

import pytest

from helpers import SECRET

REPO = pathlib.Path(__file__).resolve().parents[2]
LOG_DIR = REPO / "target" / "e2e-logs"

# Short windows and a quarter of the full connection counts: the whole run
# takes about 45 s.
ATTACK_ARGS = ["--calm", "1s", "--duration-per-attack", "1500ms", "--settle", "2500ms", "--scale", "0.25"]
# The unmeasured warm-up flood (see the module's docstring).
WARM_UP_ARGS = ["--calm", "500ms", "--duration-per-attack", "1s", "--settle", "500ms", "--scale", "0.25"]
SERVER_FLAGS = ["--send-rate", "0", "--room-idle-timeout", "1s", "--store-cache-bytes", "1MiB"]
ATTACKS = [
    "slowloris",
    "half-open",
    "silent-upgrades",
    "garbage",
    "slow-consumers",
    "descriptors",
    "message-flood",
    "fragment-flood",
]


def loadtest_bin(roomcast_bin: str) -> pathlib.Path:
    path = pathlib.Path(roomcast_bin).parent / "roomcast-loadtest"
    if not path.exists():
        pytest.fail(
            f"{path} is missing: build it with `cargo build --release --workspace` (scripts/test.sh does)",
            pytrace=False,
        )
    return path


def trouble(window: dict) -> int:
    return window["errors"] + window["disconnects"] + window["gaps"] + window["lost"]


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_healthy_clients_and_server_survive_every_attack(roomcast_bin, start_server, tmp_path):
    lt = loadtest_bin(roomcast_bin)
    srv = start_server(*SERVER_FLAGS, threads=1)
    out = tmp_path / "attack.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROOMCAST_")}
    env["ROOMCAST_JWT_SECRET"] = SECRET
    base = [str(lt), "attack", "--url", f"ws://127.0.0.1:{srv.port}/v1/ws", "--server-pid", str(srv.proc.pid)]
    warm_out = tmp_path / "warm-up.json"
    warm = subprocess.run(
        [*base, "--attacks", "message-flood", "--json", str(warm_out), *WARM_UP_ARGS],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=60,
    )
    assert warm.returncode in (0, 1), f"warm-up could not run (exit {warm.returncode}):\n{warm.stdout[-4000:]}"
    warm_server = json.loads(warm_out.read_text())["attacks"][0]["server"]
    assert warm_server["alive_after"] is True and warm_server["healthz_after"], f"after the warm-up: {warm_server}"
    cmd = [*base, "--attacks", ",".join(ATTACKS), "--json", str(out), *ATTACK_ARGS]
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=200)
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    (LOG_DIR / "attack.log").write_text(proc.stdout)
    # 0: every goal met; 1: some goal missed (judged below, latency aside); 2: could not run.
    assert proc.returncode in (0, 1), f"attack scenario could not run (exit {proc.returncode}):\n{proc.stdout[-4000:]}"
    assert out.exists(), proc.stdout[-4000:]
    report = json.loads(out.read_text())
    (LOG_DIR / "attack.json").write_text(json.dumps(report, indent=2))
    print(proc.stdout)

    assert [a["name"] for a in report["attacks"]] == ATTACKS, proc.stdout[-4000:]
    problems = []
    for a in report["attacks"]:
        name, h, s = a["name"], a["healthy"], a["server"]
        for phase in ("calm", "during", "after"):
            if trouble(h[phase]):
                problems.append(f"{name}: healthy clients in the {phase} window: {h[phase]}; events: {h['events'][:5]}")
        if h["ping"]["count"] == 0:
            problems.append(f"{name}: no healthy ping came back during the attack")
        if s["alive_after"] is not True or not s["healthz_after"]:
            problems.append(f"{name}: server not healthy after the attack: {s}")
        if s["rss_after_bytes"] > 1.2 * s["rss_before_bytes"]:
            problems.append(
                f"{name}: RSS {s['rss_before_bytes'] >> 10} KiB before, {s['rss_after_bytes'] >> 10} KiB after "
                f"(peak {s['rss_peak_bytes'] >> 10} KiB)"
            )
        if s["fds_after"] > 1.2 * s["fds_before"]:
            problems.append(f"{name}: open descriptors {s['fds_before']} before, {s['fds_after']} after")
    if report["other_events"]:
        problems.append(f"healthy events outside the attacks: {report['other_events'][:5]}")
    assert srv.proc.poll() is None, "the server exited during the attacks"
    health = srv.request("GET", "/healthz")
    assert health.status == 200, f"/healthz after the attacks: {health.status}"
    assert not problems, "\n".join(problems) + "\n\n" + proc.stdout[-6000:]
