"""Structured logs: --log-format json|logfmt, --log-level, ROOMCAST_LOG; the
events a log pipeline needs, never a token or a query string, and a full log
pipe that drops (and counts) lines instead of stopping the server."""

import json
import os
import re
import signal
import socket
import subprocess
import threading
import time

import pytest

from helpers import HOST, free_port, mint_token

SECRET_TOKEN_MARK = "tokenmark"


def refused_upgrade(srv, query="", headers=None):
    s = socket.create_connection((HOST, srv.port), timeout=5)
    try:
        hdrs = {"Host": "x", "Upgrade": "websocket", "Connection": "Upgrade",
                "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version": "13"}
        hdrs.update(headers or {})
        head = f"GET /v1/ws{query} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items()) + "\r\n"
        s.sendall(head.encode())
        return s.recv(4096)
    finally:
        s.close()


def slow_consumer(srv, room):
    slow = srv.raw_ws("slowpoke", rcvbuf=4096)
    slow.send_json({"op": "join", "room": room, "ref": "j"})
    time.sleep(0.3)
    sender = srv.ws("sender")
    try:
        for _ in range(6000):
            sender.send({"op": "send", "room": room, "body": "x" * 1000})
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and "slow_consumer" not in srv.output():
            time.sleep(0.1)
    finally:
        sender.close()


def wait_for(srv, text, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in srv.output():
            return
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not logged:\n{srv.output()[-3000:]}")


def test_json_lines_carry_the_events_and_no_secrets(start_server):
    srv = start_server("--log-format", "json", "--send-rate", "0", "--max-queue-bytes", "64KiB")
    secret_tok = mint_token("mallory", secret="x" * 40) + SECRET_TOKEN_MARK
    assert b" 401 " in refused_upgrade(srv, query=f"?access_token={secret_tok}&{SECRET_TOKEN_MARK}q=1")
    assert b" 401 " in refused_upgrade(srv, headers={"Authorization": f"Bearer {secret_tok}"})
    assert b" 426 " in refused_upgrade(srv, headers={"Upgrade": "h2c"})
    slow_consumer(srv, "logs-room")
    wait_for(srv, '"event":"slow_consumer"')
    assert srv.stop(15) == 0
    lines = [l for l in srv.output().splitlines() if l.strip()]
    events = []
    for line in lines:
        v = json.loads(line)  # every line is one JSON object
        assert {"ts", "level", "event", "msg"} <= v.keys(), v
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", v["ts"]), v
        events.append(v)
    names = [e["event"] for e in events]
    assert names[0] == "listening" and events[0]["url"] == f"http://{HOST}:{srv.port}", events[0]
    assert {"upgrade_refused", "slow_consumer", "draining", "stopped"} <= set(names), names
    refused = [e for e in events if e["event"] == "upgrade_refused"]
    assert [e["status"] for e in refused] == [401, 401, 426], refused
    assert all(e["path"] == "/v1/ws" and e["ip"] == HOST for e in refused), refused
    assert refused[0]["reason"] and refused[0]["code"] == "unauthorized", refused[0]
    slow = next(e for e in events if e["event"] == "slow_consumer")
    assert slow["user"] == "slowpoke" and slow["queued_bytes"] > 0 and slow["level"] == "warn", slow
    text = srv.output()
    assert SECRET_TOKEN_MARK not in text and "access_token" not in text, text


def test_the_page_link_with_a_token_is_for_terminals_only(start_server):
    """Without ROOMCAST_JWT_SECRET the server makes a secret and prints a
    link with a ready token: in text mode (a terminal), never in a
    structured log."""
    srv = start_server(env={"ROOMCAST_JWT_SECRET": None})
    wait_for(srv, "#token=")
    srv.stop(15)
    srv = start_server("--log-format", "json", env={"ROOMCAST_JWT_SECRET": None})
    wait_for(srv, '"event":"page"')
    srv.stop(15)
    assert "#token=" not in srv.output() and "eyJ" not in srv.output(), srv.output()


def test_logfmt_lines(start_server):
    srv = start_server("--log-format", "logfmt")
    refused_upgrade(srv)
    wait_for(srv, "event=upgrade_refused")
    assert srv.stop(15) == 0
    pat = re.compile(r'^ts=\S+Z level=(error|warn|info|debug) event=[a-z_]+ msg=("([^"\\]|\\.)*"|\S+)( [a-z_]+=("([^"\\]|\\.)*"|\S+))*$')
    lines = [l for l in srv.output().splitlines() if l.strip()]
    assert lines and all(pat.match(l) for l in lines), [l for l in lines if not pat.match(l)]
    assert any("event=upgrade_refused" in l and "status=401" in l and "path=/v1/ws" in l for l in lines), lines


def test_a_refusal_flood_is_held_back_at_info(start_server):
    """Past 20 refusal lines a second per reactor, refusals are counted, not
    logged, at the default level; the next line says how many were held."""
    srv = start_server("--log-format", "json", "--threads", "1", "--request-rate", "0", "--connect-rate-per-ip", "0")
    for _ in range(200):
        refused_upgrade(srv)
    time.sleep(1.1)
    refused_upgrade(srv)
    wait_for(srv, '"held":')
    time.sleep(0.3)
    events = [json.loads(l) for l in srv.output().splitlines() if l.strip()]
    refused = [e for e in events if e["event"] == "upgrade_refused"]
    assert 20 <= len(refused) <= 60, len(refused)
    assert sum(e["held"] for e in refused) + len(refused) >= 200, refused[-3:]


def test_log_level_filters(start_server):
    srv = start_server("--log-format", "json", "--log-level", "warn", "--send-rate", "0",
                       "--max-queue-bytes", "64KiB")
    # Where it listens is said at every level.
    wait_for(srv, '"event":"listening"')
    refused_upgrade(srv)
    slow_consumer(srv, "lvl-room")
    wait_for(srv, '"event":"slow_consumer"')
    assert srv.stop(15) == 0
    events = [json.loads(l) for l in srv.output().splitlines() if l.strip()]
    assert all(e["level"] in ("warn", "error") or e["event"] in ("listening", "stopped") for e in events), events
    assert "upgrade_refused" not in [e["event"] for e in events]


def test_roomcast_log_env(start_server):
    srv = start_server("--log-format", "json", env={"ROOMCAST_LOG": "error"})
    refused_upgrade(srv)
    time.sleep(0.3)
    assert srv.stop(15) == 0
    events = [json.loads(l)["event"] for l in srv.output().splitlines() if l.strip()]
    assert set(events) <= {"listening", "stopped"}, srv.output()
    # The setting's own variable and the flag come before ROOMCAST_LOG.
    srv = start_server("--log-format", "json", env={"ROOMCAST_LOG": "error", "ROOMCAST_LOG_LEVEL": "info"})
    wait_for(srv, '"event":"listening"')
    srv.stop(15)


def test_bad_log_settings_exit_2(roomcast_bin, tmp_path):
    for args, env in [(["--log-format", "xml"], {}), ([], {"ROOMCAST_LOG": "loud"}), (["--log-level", "x"], {})]:
        r = subprocess.run([roomcast_bin, "serve", "--listen", f"{HOST}:0", "--data", str(tmp_path), *args],
                           env={**os.environ, **env}, capture_output=True, text=True, timeout=20)
        assert r.returncode == 2, (args, env, r.stdout, r.stderr)


def test_a_full_log_pipe_drops_lines_and_the_server_goes_on(roomcast_bin, tmp_path):
    """stderr is a pipe nobody reads. Thousands of refused upgrades later
    (each one a line at debug level) the server still answers at once, and
    says how many lines it dropped."""
    port = free_port()
    proc = subprocess.Popen(
        [roomcast_bin, "serve", "--listen", f"{HOST}:{port}", "--data", str(tmp_path), "--threads", "1",
         "--log-format", "json", "--log-level", "debug", "--request-rate", "0", "--connect-rate-per-ip", "0"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        env={**os.environ, "ROOMCAST_JWT_SECRET": "s" * 40})
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection((HOST, port), timeout=0.5).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "server did not start"
                time.sleep(0.05)
        req = (b"GET /v1/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        per_conn, conns = 4000, 5

        def flood():
            s = socket.create_connection((HOST, port), timeout=30)
            reader = threading.Thread(target=lambda: [None for _ in iter(lambda: s.recv(65536), b"")], daemon=True)
            reader.start()
            s.sendall(req * per_conn)
            s.shutdown(socket.SHUT_WR)
            reader.join(60)
            s.close()

        ts = [threading.Thread(target=flood) for _ in range(conns)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(90)
        # The reactor is not stuck behind the log: it answers now.
        t0 = time.monotonic()
        with socket.create_connection((HOST, port), timeout=5) as s:
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        assert data.startswith(b"HTTP/1.1 200"), data[:200]
        m = re.search(rb"^roomcast_log_dropped_total (\d+)", data, re.M)
        assert m and int(m.group(1)) > 0, data[-2000:]
        assert time.monotonic() - t0 < 5
        # Once the pipe is read again, the log says what it lost.
        got = b""
        proc.stderr_reader = threading.Thread(target=lambda: None)
        os.set_blocking(proc.stderr.fileno(), False)
        deadline = time.monotonic() + 10
        while b"log_dropped" not in got and time.monotonic() < deadline:
            try:
                chunk = proc.stderr.read(1 << 20)
            except BlockingIOError:
                chunk = None
            if chunk:
                got += chunk
            else:
                time.sleep(0.05)
            if b"log_dropped" not in got:
                # Something must be logged for the log thread to wake and report.
                try:
                    with socket.create_connection((HOST, port), timeout=2) as s:
                        s.sendall(req)
                        s.recv(4096)
                except OSError:
                    pass
        assert b'"event":"log_dropped"' in got, got[-2000:]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            os.set_blocking(proc.stderr.fileno(), True)
            proc.stderr.read()
        except Exception:
            pass
        assert proc.wait(20) == 0
